"""One soak run, start to report: peers and proxy up, baseline, load with faults, drain, read-back, report.

Bounded everywhere: every driver loop by count and the run's clock, every wait by a timeout, and the
whole run by a hard deadline (SIGALRM) after which everything is stopped and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from sniproxy.demo.conf import write_config
from soak import faults, report, stack, traffic
from soak.sampler import Sampler

BASELINE = 12.0           # seconds of samples before the load
AFTER = 25.0              # seconds of samples after the load, once every connection has closed
SETTLE = 45.0             # longest wait for connections to close and mail to be delivered after the load


class HardDeadline(Exception):
    """The run overran its hard deadline."""


def _alarm(_sig: int, _frame: FrameType | None) -> None:
    raise HardDeadline("hard deadline reached")


def _queue_files(postfix: Any) -> int:
    n = 0
    for sub in ("incoming", "active", "deferred", "maildrop"):
        for _root, _dirs, files in os.walk(postfix.queue_dir / sub):
            n += len(files)
    return n


def _idle_workers(proxy: stack.Proxy, sampler: Sampler, timeout: float) -> bool:
    """Wait until every worker's last ``stats`` event shows no connection (SIGUSR1 asked by ``sample``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sampler.sample()
        time.sleep(1.0)
        latest: dict[int, dict[str, Any]] = {}
        for ev in proxy.events():
            if ev.get("event") == "stats":
                latest[ev["pid"]] = ev
        pids = proxy.workers()
        if pids and all(p in latest and latest[p]["active"] == 0 for p in pids):
            return True
    return False


def run(minutes: float, out: Path, seed: int, workers: int = 2) -> int:
    """Run the soak; returns 0 when every verdict of the report passes."""
    out = out.resolve()   # the config names its files absolutely: the loader reads paths against its folder
    work = out.with_name(out.stem + "-data")
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    load_seconds = max(60.0, minutes * 60 - BASELINE - AFTER)
    hard = int(minutes * 60 + 300)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(hard)
    meta: dict[str, Any] = {"minutes": minutes, "seed": seed, "workers": workers, "started": time.time(),
                            "load_seconds": load_seconds, "hard_deadline_s": hard, "argv": sys.argv,
                            "python": sys.version.split()[0]}
    st: stack.Stack | None = None
    stop = threading.Event()
    rec = traffic.Recorder(work / "attempts.jsonl")
    try:
        # The Standard CRL expires at 70 % of the load (setup takes a few seconds: about there)
        stale_at = time.time() + 8 + BASELINE + 0.7 * load_seconds
        st = stack.start(work, stale_at, workers)
        meta["stale_at"] = st.crls.stale_at
        assert st.proxy is not None
        meta["ports"] = st.ports.__dict__
        meta["urls"] = st.urls
        meta["versions"] = _versions()
        sampler = Sampler(st.proxy, work / "samples.jsonl")
        sampler.start()
        time.sleep(BASELINE)
        reloads = supports_reload()
        meta["reloads"] = reloads
        windows, revoke_at = faults.plan(load_seconds, minutes, reloads=reloads)
        t0 = time.time()
        meta["load_start"] = t0
        meta["plan"] = [{"name": w.name, "track": w.track, "start": t0 + w.start, "end": t0 + w.end}
                        for w in windows]
        meta["revoke_at"] = t0 + revoke_at
        sampler.phase = "load"
        idle_hold = min(240.0, max(20.0, load_seconds / 6))
        ctx = traffic.Ctx(st, rec, stop, seed, idle_hold)
        runner = faults.FaultRunner(st, work / "faults.jsonl", t0, windows, revoke_at, stop,
                                    reload=make_reload(st) if reloads else None, gone_at=0.35 * load_seconds)
        runner.start()
        threads = traffic.start(ctx)
        stop.wait(load_seconds)
        stop.set()
        meta["load_end"] = time.time()
        runner.join(60)
        for t in threads:
            t.join(timeout=max(0.1, meta["load_end"] + 60 - time.time()))
        meta["threads_left"] = [t.name for t in threads if t.is_alive()]
        sampler.phase = "drain"
        # Mail accepted while Dovecot was down waits in Postfix's queue: flush it, bounded.
        deadline = time.monotonic() + SETTLE
        st.postfix.postfix("flush")
        while _queue_files(st.postfix) and time.monotonic() < deadline:
            time.sleep(1.0)
        meta["queue_left"] = _queue_files(st.postfix)
        time.sleep(2.0)   # LMTP delivery of the last queue entries
        found = traffic.readback(st, rec, seed)
        (work / "mailbox.json").write_text(json.dumps(found))
        meta["idle_after_load"] = _idle_workers(st.proxy, sampler, SETTLE)
        time.sleep(4.0)   # the HTTP backend pool's idle timeout (3 s): its connections close
        sampler.phase = "after"
        t_after = time.time()
        while time.time() - t_after < AFTER:
            sampler.sample()
            time.sleep(5.0)
        sampler.stop()
        meta["proxy_exit"] = st.proxy.stop()
        meta["worker_pids"] = sorted({e["pid"] for e in st.proxy.events() if e.get("event") == "ready"})
    except HardDeadline as exc:
        meta["aborted"] = str(exc)
    except stack.StackError as exc:
        meta["aborted"] = f"stack: {exc}"
    except Exception as exc:
        import traceback

        meta["aborted"] = f"{type(exc).__name__}: {exc}"
        meta["aborted_traceback"] = traceback.format_exc()
    finally:
        stop.set()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        if st is not None:
            st.stop()
        rec.close()
        meta["ended"] = time.time()
        (work / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    verdicts = report.write(work, out)
    return 0 if verdicts.get("pass") else 1


def supports_reload() -> bool:
    """True when this sniproxy reloads its config on SIGHUP (the supervisor of issue 13)."""
    import importlib.util

    return importlib.util.find_spec("sniproxy.control") is not None


def make_reload(st: stack.Stack) -> Callable[[bool], dict[str, Any]]:
    """A reload fault: a valid change (a limit) or an invalid file, then SIGHUP to the supervisor.

    An invalid file is put back right after the refusal: the running config never changed."""
    count = [0]
    good_text = st.config_path.read_text()

    def reload(valid: bool) -> dict[str, Any]:
        assert st.proxy is not None
        count[0] += 1
        seen = len(st.proxy.events())
        if valid:
            cfg = json.loads(json.dumps(st.config))
            cfg.setdefault("limits", {})["max_connections"] = 10000 - count[0]   # harmless, and a change
            write_config(cfg, st.config_path)
        else:
            st.config_path.write_text(good_text.replace("workers: 2", "workers: 2\nlimits: {max_connections: lots}"))
        sent = time.time()
        os.kill(st.proxy.proc.pid, signal.SIGHUP)
        out: dict[str, Any] = {"valid": valid, "result": "timeout"}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = [e for e in st.proxy.events()[seen:] if e.get("event") in ("reload", "reload_failed")]
            if new:
                ev = new[0]
                out = {"valid": valid, "result": ev["event"], "generation": ev.get("generation"),
                       "errors": ev.get("errors"), "seconds": round(time.time() - sent, 2)}
                break
            time.sleep(0.2)
        if not valid:
            st.config_path.write_text(good_text)
        return out

    return reload


def _versions() -> dict[str, str]:
    out = {}
    for name, cmd in (("dovecot", ["dovecot", "--version"]), ("postfix", ["postconf", "-h", "mail_version"]),
                      ("openssl", ["openssl", "version"])):
        try:
            out[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            out[name] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m soak --minutes N [--out FILE] [--seed S]``."""
    ap = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the run (at least 2)")
    ap.add_argument("--out", type=Path, default=None,
                    help="report file (default soak/results/<UTC date and time>.md); data next to it in <stem>-data/")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.minutes < 2:
        ap.error("--minutes must be at least 2")
    out = args.out or Path(__file__).parent / "results" / (datetime.now(UTC).strftime("%Y-%m-%dT%H%M") + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    code = run(args.minutes, out, args.seed, args.workers)
    print(f"report: {out} ({'PASS' if code == 0 else 'FAIL'})")
    return code
