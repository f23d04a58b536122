"""Report benchmark: ``sniproxy report`` over 1,000,000 synthetic ``connection`` events, on one core.

Generates the events once (``sniproxy.report.synth``: every field a real event carries, full card
identity, ~1.2 KB a line, 60 days, 20,000 holders) into ``bench/.cache``, then for each of the formats
json, table and html runs ``taskset -c CORE python -m sniproxy report LOG --format F --out FILE
--cutover-date ...`` as a child process and reads its CPU seconds (user + system) and maximum RSS from
``os.wait4``'s rusage (the child's own, not the bench's). The load average is noted before and after
(the machine is shared: a high load means the wall time, not the CPU time, is pessimistic). The json
output is read back to check every event was counted. A ``floor`` run reads the same log and only
``json.loads`` each line: what the stdlib parser costs by itself, the part no report code can remove.
Targets (issue 15): < 20 s CPU, < 200 MiB.

Run: ``python bench/report.py`` (about 2 minutes, plus ~1 minute the first time to write the log);
``--events 100000`` for a smoke run. Writes ``bench/results/report.md`` and ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniproxy.report import synth  # noqa: E402  -- after the path set-up, to bench this tree

CACHE = ROOT / "bench" / ".cache"
RUN_TIMEOUT = 300.0       # a run slower than this is killed and reported as such
SYNTH_VERSION = 1


def make_log(events: int) -> Path:
    """The synthetic log of ``events`` events (written once, then reused)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"report-{events}-v{SYNTH_VERSION}.log"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for line in synth.lines(events, days=60, holders=20_000):
                fh.write(line + "\n")
        tmp.replace(path)
    return path


# The floor of any report built on the stdlib parser: read every line and json.loads it, nothing else.
FLOOR = "import json,sys\nfor line in open(sys.argv[1], encoding='utf-8'):\n    json.loads(line)\n"


def run_one(log: Path, fmt: str, core: int, out_dir: Path) -> dict[str, Any]:
    """One ``sniproxy report`` child pinned to ``core``: CPU seconds, max RSS, wall time.

    ``fmt`` ``floor`` runs the read-and-json.loads loop alone instead (what the parser costs by itself).
    """
    out = out_dir / f"report.{fmt}"
    cmd = [sys.executable, "-m", "sniproxy", "report", str(log), "--format", fmt, "--out", str(out),
           "--cutover-date", "2027-01-15"]
    if fmt == "floor":
        cmd = [sys.executable, "-c", FLOOR, str(log)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + RUN_TIMEOUT
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    row: dict[str, Any] = {"format": fmt, "exit": proc.returncode, "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                           "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
                           "max_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2),
                           "out_bytes": out.stat().st_size if out.exists() else 0, "command": " ".join(cmd)}
    if proc.returncode != 0:
        row["stderr"] = err[-2000:]
    if fmt == "json" and proc.returncode == 0:
        report = json.loads(out.read_text())
        row["events_counted"] = report["totals"]["connections"]
        row["malformed"] = report["input"]["malformed"]
    return row


def main() -> int:
    """Generate (once), run each format, write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "report.json"))
    args = ap.parse_args()
    t0 = time.monotonic()
    log = make_log(args.events)
    gen_s = time.monotonic() - t0
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("floor", "json", "table", "html"):
            rows.append(run_one(log, fmt, args.core, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()
    result = {"events": args.events, "log_bytes": log.stat().st_size, "log": str(log.relative_to(ROOT)),
              "generate_s": round(gen_s, 1), "core": args.core, "python": platform.python_version(),
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
              "runs": rows, "targets": {"cpu_s": 20, "max_rss_mib": 200}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# `sniproxy report` over {args.events:,} events (bench/report.py)", "",
          f"Log: {result['log_bytes'] / 2**20:.0f} MiB of synthetic JSON lines ({result['log']}), one "
          f"process pinned to CPU {args.core} with taskset; Python {result['python']} on {result['machine']}, "
          f"{result['cpus']} CPUs shared with other work: load average {result['loadavg_before'][0]} before, "
          f"{result['loadavg_after'][0]} after (1 min). CPU seconds and max RSS are the child's rusage "
          "(os.wait4). Targets: < 20 s CPU, < 200 MiB.", "",
          "| format | CPU s (user+sys) | max RSS MiB | wall s | output bytes | exit |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['format']} | {r['cpu_s']} ({r['user_s']}+{r['sys_s']}) | {r['max_rss_mib']} | "
                  f"{r['wall_s']} | {r['out_bytes']:,} | {r['exit']} |")
    md[-len(rows):] = [line.replace("| floor |", "| floor: read + json.loads only |") for line in md[-len(rows):]]
    counted = next((r.get("events_counted") for r in rows if r["format"] == "json"), None)
    md += ["", f"Events counted by the json run: {counted} (malformed: "
               f"{next((r.get('malformed') for r in rows if r['format'] == 'json'), None)}).", "",
           f"Command: `{rows[1]['command']}` (and `--format table`, `--format html`); floor: a `python -c` "
           "loop reading the same file and calling `json.loads` on each line, nothing else.", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    ok = all(r["exit"] == 0 for r in rows) and counted == args.events
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
