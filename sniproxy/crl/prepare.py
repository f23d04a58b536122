"""Off-loop CRL preparation: decode, validate and index a CRL, in a thread or in the helper process.

Owns: the ``Prepared`` result (in memory, or as files the helper wrote and the caller maps), the temp
files those are written to, and the helper's idle priority. Pure CPU and file I/O on the caller's
data: must not touch the event loop, the ``RevocationHolder`` or the cache's names (``CrlManager``
decides what is installed and what is kept).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from sniproxy.crl.index import RevokedIndex, build_index, map_index, write_index
from sniproxy.crl.validate import CrlMeta, der_of, validate


@dataclass(frozen=True, slots=True)
class Prepared:
    """A CRL validated on its own and indexed, ready to install."""

    meta: CrlMeta
    index: RevokedIndex
    der_file: Path | None = None   # a validated DER temp file to become the cache copy (large CRLs)


@dataclass(frozen=True, slots=True)
class PreparedFiles:
    """What the helper process sends back: a few hundred bytes, whatever the CRL's size."""

    meta: CrlMeta
    der_path: str      # the input itself when it was DER, else a DER copy the helper wrote
    index_path: str    # the index file for ``map_index``


def prepare(data: bytes, cas_der: tuple[bytes, ...], now: float) -> Prepared:
    """Decode, validate and index a CRL in memory. Pure CPU: runs in a worker thread."""
    cas = [x509.load_der_x509_certificate(d) for d in cas_der]
    crl, _, meta = validate(data, cas, datetime.fromtimestamp(now, UTC))
    return Prepared(meta, build_index(der_of(crl, data), meta.entries))


def prepare_file(path: str, cas_der: tuple[bytes, ...], now: float, workdir: str) -> PreparedFiles:
    """Decode, validate and index the CRL in ``path`` into files of ``workdir``. Runs in the helper process."""
    cas = [x509.load_der_x509_certificate(d) for d in cas_der]
    data = Path(path).read_bytes()
    crl, _, meta = validate(data, cas, datetime.fromtimestamp(now, UTC))
    der = der_of(crl, data)
    made: list[Path] = []
    try:
        der_path = Path(path)
        if der is not data:
            der_path = temp_file(Path(workdir), "der", der)
            made.append(der_path)
        index_path = temp_file(Path(workdir), "index", b"")
        made.append(index_path)
        write_index(der, index_path, meta.entries)
    except BaseException:
        for f in made:
            f.unlink(missing_ok=True)
        raise
    return PreparedFiles(meta, str(der_path), str(index_path))


def background_priority() -> None:
    """Run the helper process at idle priority: indexing a CRL must never take CPU from handshakes."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):   # not Linux, or refused: the lowest nice level will do
        try:
            os.nice(19)
        except OSError:
            pass


def map_files(files: PreparedFiles, sent: Path, given: Path | None, keep: bool
               ) -> tuple[RevokedIndex, Path | None]:
    """Map what the helper wrote, remove the files no longer needed, and say which DER file to keep."""
    der_path, index_path = Path(files.der_path), Path(files.index_path)
    try:
        index = map_index(der_path, index_path)
    finally:
        index_path.unlink(missing_ok=True)
        if sent not in (given, der_path):
            sent.unlink(missing_ok=True)       # PEM input: the helper wrote a DER copy
    if der_path == given:
        return index, None                     # the cache file itself: nothing new to keep
    if not keep:
        der_path.unlink(missing_ok=True)       # mapped: the CRL stays readable without its name
        return index, None
    return index, der_path


def temp_file(directory: Path, kind: str, data: bytes) -> Path:
    """A new ``.<kind>.*.tmp`` file in ``directory`` holding ``data``, synced to disk."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{kind}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(name)

