"""What a worker's reload path leaves in RSS, with and without handing freed pages back (issue 17).

In one process per case: build the demo PKI and config, then ``--reloads`` times compile a snapshot in
the event loop's executor (as ``Worker.load`` does), swap it in and drop the old one; RSS after each.
Cases: ``none`` (glibc as is), ``trim`` (``lifecycle.memory.after_swap()`` after each swap, as the
worker does: a full collection, then the trim), ``traced`` (tracemalloc's count of the Python heap
instead of RSS: flat means the growth is pages the allocator keeps, not objects). Also times
``release()`` (CPU) after freeing 80 MB in the middle of the heap, and with nothing to give back.
Each case runs in its own interpreter so one cannot warm the other's heap.

    python bench/reload_rss.py [--reloads 60] [--out bench/results/reload_rss.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _case(kind: str, reloads: int, workdir: Path) -> dict[str, object]:
    """One case in this interpreter (called in a child: ``--case KIND``)."""
    import gc
    import tracemalloc

    from sniproxy.config.load import load
    from sniproxy.crl.state import RevocationHolder
    from sniproxy.demo.conf import DemoPorts, config_dict, write_config
    from sniproxy.demo.pki import build
    from sniproxy.lifecycle import memory
    from sniproxy.lifecycle.build import compile_at
    from sniproxy.runtime.snapshot import SnapshotHolder

    pki = build(workdir / "pki")
    path = write_config(config_dict(pki, DemoPorts(imap=1, smtp=2, imaps=3, tls=4)), workdir / "sniproxy.yaml")
    config = load(path).config
    if kind == "traced":
        tracemalloc.start()

    def figure() -> int:
        if kind == "traced":
            gc.collect()
            return tracemalloc.get_traced_memory()[0] // 1024
        rss = memory.rss_kib()
        assert rss is not None
        return rss

    async def run() -> list[int]:
        loop = asyncio.get_running_loop()
        revocation = RevocationHolder()
        holder = SnapshotHolder(compile_at(config, (), 1, time.time(), revocation).snapshot)
        out = []
        for i in range(reloads):
            built = await loop.run_in_executor(None, compile_at, config, (), i + 2, time.time(), revocation)
            holder.swap(built.snapshot)
            del built
            if kind == "trim":
                memory.after_swap()   # what Worker.load does after its swap
            out.append(figure())
        return out

    series = asyncio.run(run())
    quarter = len(series) // 4
    return {"case": kind, "unit": "KiB traced" if kind == "traced" else "KiB RSS", "first": series[0],
            "at_quarter": series[quarter], "last": series[-1],
            "growth_last_three_quarters": series[-1] - series[quarter]}


def _trim_cost() -> dict[str, float]:
    """``release()`` after 80 MB freed below a live chunk, and again with nothing left to give back."""
    from sniproxy.lifecycle import memory

    chunks = [bytes(4000) for _ in range(20_000)]
    pin = [bytes(4000) for _ in range(16)]
    del chunks
    before = memory.rss_kib() or 0
    t0 = time.process_time()    # CPU time: the wall time of a busy machine says nothing here
    memory.release()
    t1 = time.process_time()
    after = memory.rss_kib() or 0
    memory.release()
    t2 = time.process_time()
    assert len(pin) == 16
    return {"released_kib": before - after, "ms_releasing": round((t1 - t0) * 1000, 2),
            "ms_nothing_to_release": round((t2 - t1) * 1000, 3)}


def main() -> int:
    """Run every case in a child interpreter and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reload_rss.md")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            res = _trim_cost() if args.case == "trim_cost" else _case(args.case, args.reloads, Path(tmp))
        print(json.dumps(res))
        return 0
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for case in ("none", "trim", "traced", "trim_cost"):
        run = subprocess.run([sys.executable, __file__, "--case", case, "--reloads", str(args.reloads)],
                             capture_output=True, text=True, env=env, timeout=900, check=True)
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    load1 = os.getloadavg()[0]
    lines = [f"# Reload path and RSS (`python bench/reload_rss.py --reloads {args.reloads}`)", "",
             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, 1-minute load {load1:.2f}. "
             "Compile in the executor, swap, drop the old snapshot, per reload; figures after each.", "",
             "| case | unit | after reload 1 | after 1/4 | last | growth over the last 3/4 |",
             "|---|---|---|---|---|---|"]
    for r in results[:3]:
        lines.append(f"| {r['case']} | {r['unit']} | {r['first']} | {r['at_quarter']} | {r['last']} | "
                     f"{r['growth_last_three_quarters']} |")
    cost = results[3]
    lines += ["", f"`release()` after 80 MB freed in the middle of the heap: {cost['released_kib']} KiB back in "
              f"{cost['ms_releasing']} ms of CPU; with nothing to give back: {cost['ms_nothing_to_release']} ms.", ""]
    args.out.write_text("\n".join(lines))
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
