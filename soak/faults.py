"""The fault schedule: which fault, when, for how long, scaled to the run's length.

Faults run on independent tracks (mail backends, HTTP backend, CRL HTTP server, LDAP), one fault at a
time per track, so each window says exactly what was wrong. A 3-minute run has every fault once; a
60-minute run six times. Every window is recorded with its actual start and end (``faults.jsonl``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soak.stack import Stack

MAIL = ("dovecot_down", "postfix_down")
HTTP = ("http_slow", "http_500")
CRL = ("crl_down", "crl_slow", "crl_truncated", "crl_bad_signature", "crl_rollback", "crl_200mb")
LDAP = ("slapd_down",)
RELOADS = ("reload_valid", "reload_invalid")
#: Faults whose window can explain a refused connection, and the reasons they explain.
EXPLAINS: dict[str, tuple[str, ...]] = {
    "dovecot_down": ("backend_unavailable", "backend_refused", "backend_protocol"),
    "postfix_down": ("backend_unavailable", "backend_refused", "backend_protocol"),
    "http_slow": ("backend_timeout",),
}
#: CRL faults and the ``crl_rejected`` reason each must produce.
CRL_REASONS = {"crl_down": ("unreachable",), "crl_slow": ("timeout",), "crl_truncated": ("unreachable",),
               "crl_bad_signature": ("bad_signature",), "crl_rollback": ("rollback",),
               "crl_200mb": ("not_a_crl", "too_large"), "slapd_down": ("unreachable",)}


@dataclass(frozen=True, slots=True)
class Window:
    """One planned fault: ``start``/``end`` in seconds from the start of the load."""

    name: str
    track: str
    start: float
    end: float


def plan(load_seconds: float, minutes: float, reloads: bool = False) -> tuple[list[Window], float]:
    """The fault windows of a run, and when (seconds into the load) the delta CRL revokes a card.

    ``cycles`` passes over each track: 1 per 10 minutes of run, at least 1. Each fault is on for a
    share of its slot (capped, so a long run has many short outages rather than a few long ones).
    """
    cycles = max(1, round(minutes / 10))
    revoke_at = 0.5 * load_seconds
    windows: list[Window] = []
    tracks: list[tuple[str, tuple[str, ...], float, float]] = [
        ("mail", MAIL, 0.35, 40.0), ("http", HTTP, 0.4, 40.0), ("crl", CRL, 0.5, 30.0)]
    if reloads:
        tracks.append(("reload", RELOADS, 0.1, 5.0))
    lead = 8.0   # a clean start: the first seconds give the latency baseline
    for track, names, share, cap in tracks:
        slot = (load_seconds - lead) / (cycles * len(names))
        on = min(slot * share, cap)
        offset = {"mail": 0.15, "http": 0.3, "crl": 0.05, "reload": 0.6}[track] * (slot - on)
        for c in range(cycles):
            for i, name in enumerate(names):
                start = lead + (c * len(names) + i) * slot + offset
                windows.append(Window(name, track, start, start + on))
    # slapd: never down when the delta is published (the revocation must go out at a known time)
    slot = (load_seconds - lead) / cycles
    on = min(slot * 0.3, 40.0)
    guard = (revoke_at - 5, revoke_at + 15)
    for c in range(cycles):
        start = lead + c * slot + 0.1 * slot
        if start < guard[1] and start + on > guard[0]:
            start = guard[1]
        if start + on < load_seconds - 2:
            windows.append(Window("slapd_down", "ldap", start, start + on))
    return sorted(windows, key=lambda w: w.start), revoke_at


class FaultRunner:
    """Applies the windows on time (one thread per track) and records what was done."""

    def __init__(self, stack: Stack, log: Path, t0: float, windows: list[Window], revoke_at: float,
                 stop: threading.Event, reload: Callable[[bool], dict[str, Any]] | None = None,
                 gone_at: float | None = None) -> None:
        self.stack, self.log, self.t0, self.windows, self.revoke_at = stack, log, t0, windows, revoke_at
        self.gone_at = gone_at
        self.stop = stop
        self.reload = reload
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _write(self, rec: dict[str, Any]) -> None:
        with self._lock, open(self.log, "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    def start(self) -> None:
        """One thread per track, plus the revocation."""
        tracks: dict[str, list[Window]] = {}
        for w in self.windows:
            tracks.setdefault(w.track, []).append(w)
        for name, ws in tracks.items():
            t = threading.Thread(target=self._track, args=(ws,), name=f"faults-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        for fn in (self._revoke, self._gone):
            t = threading.Thread(target=fn, name=f"faults-{fn.__name__}", daemon=True)
            t.start()
            self.threads.append(t)

    def _gone(self) -> None:
        """The Standard CA's CRL source answers 500 from now on: its cached CRL serves until nextUpdate."""
        if self.gone_at is None or not self._sleep_until(self.gone_at):
            return
        started = time.time()
        self.stack.crl.publish("standard-inter.crl", b"", mode="error500")
        self._write({"name": "crl_source_gone", "track": "stale", "start": started, "end": time.time(),
                     "stale_at": self.stack.crls.stale_at})

    def _sleep_until(self, offset: float) -> bool:
        """Wait until ``offset`` s into the load; False when the run is stopping."""
        delay = self.t0 + offset - time.time()
        return not (delay > 0 and self.stop.wait(delay))

    def _revoke(self) -> None:
        if not self._sleep_until(self.revoke_at):
            return
        started = time.time()
        error = None
        try:
            self.stack.slapd.put("Fort Delta", delta=self.stack.crls.delta_revoking)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        self._write({"name": "delta_revocation", "track": "ldap", "start": started, "end": time.time(),
                     "error": error})

    def _track(self, windows: list[Window]) -> None:
        for w in windows:
            if not self._sleep_until(w.start):
                return
            rec: dict[str, Any] = {"name": w.name, "track": w.track, "start": time.time()}
            try:
                rec["detail"] = self._on(w.name)
            except Exception as exc:
                rec["error"] = f"on: {type(exc).__name__}: {exc}"
            self._sleep_until(w.end)   # a stopping run still ends the fault below
            try:
                self._off(w.name)
            except Exception as exc:
                rec["error"] = f"off: {type(exc).__name__}: {exc}"
            rec["end"] = time.time()
            if w.name == "crl_200mb":
                rec["bytes_sent"] = dict(self.stack.crl.sent)
            self._write(rec)

    def _on(self, name: str) -> Any:
        s = self.stack
        if name == "dovecot_down":
            s.dovecot.halt()
        elif name == "postfix_down":
            s.postfix.halt()
        elif name in ("http_slow", "http_500"):
            s.set_http_mode(name.removeprefix("http_"))
        elif name == "crl_down":
            s.crl.go_down()
        elif name in CRL:
            s.publish_fort_inter({"crl_slow": "slow", "crl_truncated": "truncated",
                                  "crl_bad_signature": "bad_signature", "crl_rollback": "rollback",
                                  "crl_200mb": "zeros_200mb"}[name])
        elif name == "slapd_down":
            s.slapd.stop()
        elif name in RELOADS and self.reload is not None:
            return self.reload(name == "reload_valid")
        return None

    def _off(self, name: str) -> None:
        s = self.stack
        if name == "dovecot_down":
            s.dovecot.restart()
        elif name == "postfix_down":
            s.postfix.restart()
        elif name in ("http_slow", "http_500"):
            s.set_http_mode("ok")
        elif name == "crl_down":
            s.crl.come_up()
        elif name in CRL:
            s.publish_fort_inter("ok")
        elif name == "slapd_down":
            s.slapd.restart()

    def join(self, timeout: float) -> None:
        """Wait for every track to end its current window (bounded)."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
