"""Per-worker resource samples every 10 s: RSS and open fds from /proc, tasks from the worker's own
``stats`` event (SIGUSR1, sent to the workers only: the supervisor does not handle it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

from soak.stack import Proxy

PERIOD = 10.0


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    """How many descriptors ``pid`` holds."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler:
    """A thread writing one JSON line per worker per period to ``path``, with the run phase."""

    def __init__(self, proxy: Proxy, path: Path) -> None:
        self.proxy, self.path = proxy, path
        self.phase = "baseline"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        """Begin sampling now."""
        self._thread.start()

    def sample(self) -> None:
        """Take one sample of every worker now."""
        now = time.time()
        with open(self.path, "a") as fh:
            for pid in self.proxy.workers():
                fh.write(json.dumps({"t": now, "pid": pid, "phase": self.phase, "rss_kib": rss_kib(pid),
                                     "fds": open_fds(pid)}) + "\n")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(PERIOD)

    def stop(self) -> None:
        """Stop sampling (bounded)."""
        self._stop.set()
        self._thread.join(timeout=15)
