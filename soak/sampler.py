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


def _tcp_table(pid: int) -> dict[str, str]:
    """socket inode -> "local->remote" for the TCP sockets of ``pid``'s network namespace."""
    out: dict[str, str] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9:
                out[f[9]] = f"{_addr(f[1])}->{_addr(f[2])}"
    return out


def _addr(hexaddr: str) -> str:
    host, _, port = hexaddr.partition(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        ip = "v6"
    return f"{ip}:{int(port, 16)}"


def fd_detail(pid: int) -> list[str]:
    """What each descriptor of ``pid`` is: a file path, a pipe, or a TCP socket with its addresses."""
    out: list[str] = []
    tcp = _tcp_table(pid)
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            target = "tcp " + tcp.get(target[8:-1], "(not tcp) " + target)
        out.append(target)
    return sorted(out)


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
        forwards = self.proxy.supervisor_forwards_usr1()
        if forwards:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proxy.proc.pid, signal.SIGUSR1)
        with open(self.path, "a") as fh:
            for pid in self.proxy.workers():
                rec = {"t": now, "pid": pid, "phase": self.phase, "rss_kib": rss_kib(pid), "fds": open_fds(pid),
                       "load1": os.getloadavg()[0]}
                if self.phase != "load":   # what the descriptors are, where their count is compared
                    rec["fd_detail"] = fd_detail(pid)
                fh.write(json.dumps(rec) + "\n")
                if not forwards:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGUSR1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            # every 2 s outside the load: the baseline and the after figures need several samples
            self._stop.wait(PERIOD if self.phase == "load" else 2.0)

    def stop(self) -> None:
        """Stop sampling (bounded)."""
        self._stop.set()
        self._thread.join(timeout=15)
