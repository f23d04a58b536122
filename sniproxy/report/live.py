"""The live ``/migration`` page: each worker's figures since its start, merged by the admin process.

``install(dump_dir)`` (once per worker) subscribes to ``sniproxy.driver.shared.OBSERVERS``: every
``connection`` event feeds an in-memory ``Aggregate``, and a daemon thread writes it to
``dump_dir/live-<pid>.json`` every ``DUMP_INTERVAL`` seconds when it changed (write to a temporary file,
then rename: a reader never sees half a dump). ``render_live(dump_dir)`` (the admin route) merges every
worker's dump and renders the same page as ``sniproxy report --format html``.

Bounds: the live aggregate keeps at most ``LIVE_MAX_KEYS`` holders, addresses and blocking clients and
``LIVE_MAX_NAMES`` SNI names and labels (the page says when a table is full), so a dump stays a few MB
however long the worker runs; ``render_live`` skips any file over ``MAX_DUMP_BYTES``.
Dumps of processes that are gone (a worker replaced, a previous run) are skipped by their pid.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from html import escape
from pathlib import Path
from typing import Any

from sniproxy.lifecycle.pidfile import pid_alive
from sniproxy.report.aggregate import Aggregate
from sniproxy.report.html import render_html
from sniproxy.report.summary import Options, build, iso

DUMP_INTERVAL = 5.0
LIVE_MAX_KEYS = 20_000
LIVE_MAX_NAMES = 200
MAX_DUMP_BYTES = 32 * 1024 * 1024
LEGACY_FLOWS = ("2bis",)


class LiveRecorder:
    """One worker's aggregate, fed by the connection observer and dumped by a thread."""

    def __init__(self, dump_dir: Path, legacy_flows: tuple[str, ...] = LEGACY_FLOWS) -> None:
        self.dump_dir = dump_dir
        self.path = dump_dir / f"live-{os.getpid()}.json"
        self.agg = Aggregate(legacy_flows=legacy_flows, max_keys=LIVE_MAX_KEYS, max_names=LIVE_MAX_NAMES)
        self.started = time.time()
        self.errors = 0
        self._dirty = True
        # The observer runs on the event loop, the dump on its own thread: the lock keeps a dump from
        # reading the aggregate mid-update. Uncontended almost always (the dump holds it a few ms).
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, event: dict[str, Any]) -> None:
        """The ``OBSERVERS`` hook: quick, and never raises into the connection that logs."""
        try:
            with self._lock:
                self.agg.add(time.time(), event)
                self._dirty = True
        except Exception:  # a malformed event must not cost the connection its log line
            self.errors += 1

    def flush(self) -> None:
        """Write the dump now if anything changed (atomic: temporary file, then rename)."""
        with self._lock:
            if not self._dirty:
                return
            state = self.agg.to_state()
            self._dirty = False
        state["pid"] = os.getpid()
        state["started"] = self.started
        state["written"] = time.time()
        state["observer_errors"] = self.errors
        data = json.dumps(state, separators=(",", ":")).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(self.path)
        except OSError:
            self._dirty = True   # a full disk must not stop the proxy; try again next time

    def _run(self) -> None:
        while not self._stop.wait(DUMP_INTERVAL):
            self.flush()

    def start(self) -> None:
        """Start the dump thread (daemon: it never holds the process open) and dump once at exit."""
        self._thread = threading.Thread(target=self._run, name="migration-live-dump", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def stop(self) -> None:
        """Stop the thread and write a last dump (tests, orderly shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=DUMP_INTERVAL + 1)
        self.flush()


_recorder: LiveRecorder | None = None


def install(dump_dir: Path) -> None:
    """Called once in each worker at start: record this worker's connections for the live page."""
    global _recorder
    from sniproxy.driver.shared import OBSERVERS

    if _recorder is not None and _recorder.path.parent == dump_dir and _recorder.observe in OBSERVERS:
        return
    rec = LiveRecorder(dump_dir)
    try:
        rec.path.unlink(missing_ok=True)   # a previous process with this pid
    except OSError:
        pass
    OBSERVERS.append(rec.observe)
    rec.start()
    _recorder = rec


def load_dumps(dump_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The dumps of live workers, and why any other file was skipped."""
    dumps: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in sorted(dump_dir.glob("live-*.json")):
        try:
            if path.stat().st_size > MAX_DUMP_BYTES:
                skipped.append(f"{path.name}: over {MAX_DUMP_BYTES} bytes")
                continue
            state = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name}: {type(exc).__name__}")
            continue
        if not isinstance(state, dict) or state.get("version") != 1:
            skipped.append(f"{path.name}: not a live dump")
            continue
        pid = state.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            skipped.append(f"{path.name}: process {pid} is gone")
            continue
        dumps.append(state)
    return dumps, skipped


def merge(dumps: list[dict[str, Any]]) -> Aggregate:
    """One aggregate of every worker's dump."""
    flows: set[str] = set()
    for d in dumps:
        flows.update(d.get("legacy_flows", []))
    agg = Aggregate(legacy_flows=tuple(sorted(flows)) or LEGACY_FLOWS, max_keys=LIVE_MAX_KEYS * 16)
    for d in dumps:
        agg.merge_state(d)
    return agg


def render_live(dump_dir: Path) -> str:
    """The admin route's page: every live worker's figures merged, with how to run the full report."""
    dumps, skipped = load_dumps(dump_dir)
    report = build(merge(dumps), None, Options())
    started = min((float(d.get("started", 0)) for d in dumps), default=0.0)
    written = max((float(d.get("written", 0)) for d in dumps), default=0.0)
    note = (f"<b>Live view</b>: the connections this proxy's {len(dumps)} worker(s) handled since "
            f"{escape(iso(started) or 'their start')}, dumped every {DUMP_INTERVAL:g} s "
            f"(newest {escape(iso(written) or 'never')}). It forgets everything at restart and sees one pod only. "
            "For the whole history over every replica's logs, run <code>sniproxy report --since 30d "
            "--cutover-date YYYY-MM-DD --format html --out report.html pod-*.log*</code> "
            "(docs/migration.md, \"Full report\").")
    if skipped:
        note += "<br>Skipped: " + escape("; ".join(skipped[:10]))
    return render_html(report, note=note)
