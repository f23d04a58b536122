"""Run the real ``sniproxy run`` as a child process and read its JSON event log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a child, wait at most 10 s, then SIGKILL it (bounded: a test never hangs on a peer)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class ProxyProcess:
    """A sniproxy child process with its stderr parsed into events as they come."""

    def __init__(self, config: Path, *, wait_ports: list[tuple[str, int]], timeout: float = 15.0) -> None:
        self.config = config
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sniproxy", "run", "-c", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Wait for the proxy's own "ready" event (a port probe could reach another process).
        deadline = time.monotonic() + timeout
        while not any(e.get("event") == "ready" for e in self._snapshot_events()):
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                self._close_pipes()
                raise RuntimeError(f"sniproxy exited {self.proc.returncode}:\n" + self.log_text())
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("sniproxy did not become ready:\n" + self.log_text())
            time.sleep(0.02)
        ready = next(e for e in self._snapshot_events() if e.get("event") == "ready")
        missing = {f"{h}:{p}" for h, p in wait_ports} - set(ready.get("listening", []))
        if missing and self.proc.poll() is None and '"supervisor"' not in self.log_text():
            self.stop()
            raise RuntimeError(f"sniproxy is not listening on {missing}:\n" + self.log_text())

    def _snapshot_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            with self._lock:
                self.lines.append(line)
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    self.events.append(ev)

    def connection_events(self) -> list[dict[str, Any]]:
        """Every ``connection`` event so far."""
        with self._lock:
            return [e for e in self.events if e.get("event") == "connection"]

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first connection event matching ``pred``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.connection_events():
                if pred(ev):
                    return ev
            time.sleep(0.05)
        raise AssertionError(f"no matching event in {timeout}s; events: {self.connection_events()}")

    def wait_log(self, name: str, pred: Callable[[dict[str, Any]], bool] = lambda e: True,
                 timeout: float = 10.0) -> dict[str, Any]:
        """The first event called ``name`` (any kind, e.g. ``crl_updated``) matching ``pred``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self._snapshot_events():
                if ev.get("event") == name and pred(ev):
                    return ev
            if self.proc.poll() is not None:
                raise AssertionError(f"sniproxy exited {self.proc.returncode} waiting for {name}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {name} event in {timeout}s; log:\n{self.log_text()[-4000:]}")

    def clear(self) -> None:
        """Forget events seen so far."""
        with self._lock:
            self.events.clear()

    def log_text(self) -> str:
        """The whole stderr so far."""
        with self._lock:
            return "\n".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, bounded wait, then SIGKILL."""
        terminate(self.proc)
        self._reader.join(timeout=2)
        self._close_pipes()
        return self.proc.returncode

    def _close_pipes(self) -> None:
        # Ours to close once the child is gone: left to the garbage collector they are a ResourceWarning,
        # an error under the suite's warnings-as-errors. The reader thread has had its chance to finish.
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not self._reader.is_alive():
                pipe.close()
