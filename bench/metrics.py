"""Cost of the metrics on one connection: in-process counters alone vs mirrored to prometheus_client's files.

    python bench/metrics.py --out bench/results/metrics.json

Each mode runs in a fresh interpreter (installing the exposition is process-wide): N times the updates one
served connection makes (ACTIVE.inc at accept, HANDSHAKES.observe, connection_ended at the end), with
the labels of a real listener. Prints and writes microseconds per connection (best of 5 rounds). Bounded:
N iterations per round, 5 rounds, each child killed after 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, time, json
from pathlib import Path
from sniproxy.observability import metrics as m
mode, n, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "prometheus":
    from sniproxy.observability import prom
    prom.install(Path(d))
best = None
for _ in range(5):
    t0 = time.perf_counter()
    for i in range(n):
        m.ACTIVE.inc("imap", "imap")
        m.HANDSHAKES.observe("imap", "2bis", value=0.004)
        m.connection_ended("imap", "imap", "2bis", "ok", "ok", 5123, 20480)
    dt = (time.perf_counter() - t0) / n
    best = dt if best is None else min(best, dt)
print(json.dumps({"mode": mode, "us_per_connection": round(best * 1e6, 2), "iterations": n}))
"""


def main() -> int:
    """Run both modes and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("bench/results/metrics.json"))
    ap.add_argument("-n", type=int, default=100_000)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    results = []
    for mode in ("in_process", "prometheus"):
        with tempfile.TemporaryDirectory(prefix="sniproxy-bench-metrics-") as d:
            out = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.n), d], capture_output=True,
                                 text=True, timeout=120, env=env, check=True)
            results.append(json.loads(out.stdout))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2) + "\n")
    for r in results:
        print(f"{r['mode']:12} {r['us_per_connection']:8.2f} us per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
