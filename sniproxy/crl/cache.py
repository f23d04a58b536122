"""The persistent CRL cache: the last good CRL of every source, and its fetch status, on disk.

One pair of files per source in the cache directory, named from a hash of the source URL:
``<slug>.crl`` (DER, exactly as validated) and ``<slug>.json`` (URL, validators, last fetch
result). Every write is atomic (temporary file, fsync, rename, fsync of the directory), so a crash
leaves the previous good copy, never a torn one. Blocking file I/O: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def slug(url: str) -> str:
    """A stable file-name stem for a source URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:24]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class CrlCache:
    """Files of the CRL cache directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def crl_path(self, url: str) -> Path:
        """Where the last good CRL of ``url`` lives."""
        return self.directory / f"{slug(url)}.crl"

    def status_path(self, url: str) -> Path:
        """Where the fetch status of ``url`` lives."""
        return self.directory / f"{slug(url)}.json"

    def read_crl(self, url: str) -> bytes | None:
        """The cached CRL of ``url``, or None."""
        try:
            return self.crl_path(url).read_bytes()
        except FileNotFoundError:
            return None

    def read_status(self, url: str) -> dict[str, Any]:
        """The recorded status of ``url`` (empty when none or unreadable)."""
        try:
            data = json.loads(self.status_path(url).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_crl(self, url: str, der: bytes) -> None:
        """Store a validated CRL."""
        atomic_write(self.crl_path(url), der)

    def adopt_crl(self, url: str, synced_file: Path) -> None:
        """Make ``synced_file`` (already fsynced, in this directory) the stored CRL of ``url``, atomically."""
        os.replace(synced_file, self.crl_path(url))
        _sync_dir(self.directory)

    def remove_stale_temps(self, older_than: float) -> int:
        """Delete temporary files a crash left behind (only old ones: another worker may be writing)."""
        removed = 0
        limit = time.time() - older_than
        for f in self.directory.glob(".*.tmp"):
            try:
                if f.stat().st_mtime < limit:
                    f.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def write_status(self, url: str, status: dict[str, Any]) -> None:
        """Store the fetch status of ``url``."""
        atomic_write(self.status_path(url), (json.dumps({"url": url, **status}, indent=1) + "\n").encode())
