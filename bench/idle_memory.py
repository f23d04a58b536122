"""Memory per idle mutual-TLS connection through sniproxy, for one or more source trees side by side.

N TLS 1.3 connections with the RSA-2048 ``fort`` card through a ``protocol: tls`` listener (one worker,
``-O``, log level warning) to bench/run.py's raw backend (``hold``: sends b"*", then nothing), each read
to its first byte and left idle; the figure is the server's RSS delta (supervisor + worker) / N, after 50
warm-up connections, on a freshly started server each round (bench/run.py's ``memory()``, the same
measure as bench/peers.py's idle block). Trees are interleaved and their order alternates every round,
so that ``--src /work/main,.`` compares main and a branch in one sitting.

    python bench/idle_memory.py --src /work/main,/work/wt-i16-idle --conns 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=".", help="comma-separated source trees to run sniproxy from")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the raw rounds here")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        core.backend_entry(args.backend, 1)
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))   # inherited by the server
    from sniproxy.demo import pki as testpki

    srcs = [str(Path(s).resolve()) for s in args.src.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="sniproxy-idle-"))
    pki = testpki.build(tmp / "pki")
    bports = dict(zip(("hold", "source", "sink", "stats"), core.free_ports(4), strict=True))
    backend = subprocess.Popen([sys.executable, __file__, "--backend",
                                ",".join(f"{k}={v}" for k, v in bports.items())], stdin=subprocess.PIPE)

    def tweak(d: dict[str, Any]) -> None:
        d["limits"] = {"max_connections": 20000, "max_per_ip": 20000}   # all from 127.0.0.1

    core.SNIPROXY_PY_FLAGS = ["-O"]
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in srcs}
    try:
        core.wait_listen(bports["hold"], backend)  # type: ignore[arg-type]
        for rnd in range(args.rounds):
            order = srcs if rnd % 2 == 0 else srcs[::-1]
            for src in order:
                t = core.sniproxy_target(f"s{srcs.index(src)}", 1, pki, bports, tmp, keys=("hold",), tweak=tweak)
                # `python -m` puts the working directory first on sys.path: run from the tree itself
                t.cmd = ["env", "-C", src, f"PYTHONPATH={src}", *t.cmd]
                t.start()
                try:
                    r = core.memory(t, pki, args.conns, timeout=120)
                finally:
                    t.stop()
                r["load1"] = os.getloadavg()[0]
                rows[src].append(r)
                print(f"round {rnd} {src}: {r['kib_per_conn']} KiB/conn, established {r['established']}, "
                      f"rss {r['rss_before_kib']} -> {r['rss_after_kib']} KiB, load {r['load1']:.2f}", flush=True)
                time.sleep(1.0)
    finally:
        core.stop_backend(backend)
        shutil.rmtree(tmp, ignore_errors=True)
    for src, rs in rows.items():
        vals = [r["kib_per_conn"] for r in rs if r["kib_per_conn"] is not None]
        if vals:
            print(f"{src}: median {statistics.median(vals):.1f} KiB per idle connection "
                  f"({min(vals):.1f} to {max(vals):.1f}, {len(vals)} rounds of {args.conns})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
