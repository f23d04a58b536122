"""The instance lock: one running sniproxy per state directory (or per config file).

A pid file held under ``flock``: the kernel drops the lock when the process dies, so a stale file
never blocks a restart, and a second instance learns the first one's pid. ``sniproxy reload``
reads it to find whom to signal. The status file next to it holds the last reload's result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sniproxy.config.model import Config
from sniproxy.errors import SniproxyError


def runtime_dir(config: Config) -> Path:
    """Where the pid and status files live: ``state_dir``, else a per-config folder in the temp dir.

    Per config file when there is no state dir, so two instances of two configs never share a lock.
    """
    if config.state_dir is not None:
        return config.state_dir
    digest = hashlib.sha256(str(config.source).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"sniproxy-{os.getuid()}" / digest


class AlreadyRunning(SniproxyError):
    """Another instance holds the lock."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"another sniproxy ({who}) is running with this config or state directory "
                         f"(lock {path}); stop it, or use `sniproxy reload` to change its config")


class PidFile:
    """The held lock; released (and the file removed) by ``release`` or at process exit."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "sniproxy.pid"
        self.status_path = directory / "sniproxy.status.json"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise ``AlreadyRunning`` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = read_pid(self.path)
            os.close(fd)
            raise AlreadyRunning(self.path, pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def write_status(self, status: dict[str, Any]) -> None:
        """Replace the status file atomically (``sniproxy reload`` polls it)."""
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status), encoding="utf-8")
        tmp.replace(self.status_path)

    def release(self) -> None:
        """Remove the pid file and drop the lock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def read_pid(path: Path) -> int | None:
    """The pid written in a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_status(path: Path) -> dict[str, Any] | None:
    """The status file's content, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (one we may not signal counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
