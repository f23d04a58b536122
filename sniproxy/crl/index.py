"""A compact, immutable revocation index: serial lookup in O(log n) with no per-entry objects.

Why not OpenSSL's own CRL check: with a 100,000-entry CRL in the store, OpenSSL spends about 4 ms
of CPU per handshake on it (measured with HAProxy and stunnel, see ``bench/crl.py``). Here a CRL of
n entries becomes two flat arrays next to its DER: the sorted low 64 bits of every serial and the
offset of its entry in the DER (12 bytes an entry). A lookup is one C-level ``bisect``; on a hit
the entry itself is read from the DER to compare the full serial and get its date and reason.

Large CRLs are indexed in a helper process that writes the arrays to a file; the proxy maps that
file and the DER file (``map_index``) instead of receiving tens of megabytes through a pipe, which
stalled its event loop for tens of milliseconds while they were unpickled.
"""

from __future__ import annotations

import mmap
import struct
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from sniproxy.crl.entries import MASK64, NO_REASON, Buffer, read_entry, scan
from sniproxy.crl.errors import CrlRejected

#: RFC 5280 CRLReason codes (7 is unused).
REASON_CODES: dict[x509.ReasonFlags, int] = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}
REASON_NAMES: dict[int, str] = {code: flag.value for flag, code in REASON_CODES.items()}
REMOVE_FROM_CRL = 8
_MAGIC = b"SNIXv001"
_HEAD = struct.Struct("<8sQ")


@dataclass(frozen=True, slots=True)
class Revoked:
    """One revocation entry as found: when (None if unreadable) and why (RFC 5280 code, None when absent)."""

    serial: int
    date: float | None
    reason: int | None

    @property
    def reason_name(self) -> str:
        """The reason as RFC 5280 names it (``unspecified`` when absent)."""
        return REASON_NAMES.get(self.reason, "unspecified") if self.reason is not None else "unspecified"


@dataclass(frozen=True, slots=True)
class RevokedIndex:
    """Sorted serial keys of one CRL with the offsets of their entries in ``der``."""

    keys: Sequence[int]     # array('Q') or a memoryview cast to 'Q': sorted low 64 bits of each serial
    offsets: Sequence[int]  # array('I') or a memoryview cast to 'I': entry offsets, same order
    der: Buffer             # the CRL's DER: bytes, or a read-only mmap of its file

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, serial: int) -> Revoked | None:
        """The entry for ``serial``, or None."""
        key = serial & MASK64
        keys = self.keys
        i = bisect_left(keys, key)
        n = len(keys)
        while i < n and keys[i] == key:
            found, date, code = read_entry(self.der, self.offsets[i])
            if found == serial:
                return Revoked(serial, date, None if code == NO_REASON else code)
            i += 1
        return None

    def nbytes(self) -> int:
        """Bytes of the two arrays (the DER itself is counted apart, see ``der_bytes``)."""
        return len(self.keys) * 12

    def der_bytes(self) -> int:
        """Size of the DER the entries are read from (mapped from a file for large CRLs)."""
        return len(self.der)


def _sorted_arrays(der: Buffer, expected: int) -> tuple[array[int], array[int]]:
    packed = scan(der)
    if len(packed) != expected:
        raise CrlRejected("parse_error", f"read {len(packed)} entries where the CRL parser found {expected}")
    packed.sort()
    return array("Q", [v >> 32 for v in packed]), array("I", [v & 0xFFFFFFFF for v in packed])


def build_index(der: bytes, expected: int) -> RevokedIndex:
    """Index the ``expected`` entries of the CRL whose DER is ``der``, in memory. CPU-bound: off the loop."""
    keys, offsets = _sorted_arrays(der, expected)
    return RevokedIndex(keys, offsets, der)


def write_index(der: Buffer, index_path: Path, expected: int) -> None:
    """Index the CRL whose DER is ``der`` into the file ``index_path`` (for ``map_index``). Helper-process side."""
    keys, offsets = _sorted_arrays(der, expected)
    with open(index_path, "wb") as out:
        out.write(_HEAD.pack(_MAGIC, len(keys)))
        keys.tofile(out)
        offsets.tofile(out)


def save_index(index: RevokedIndex, index_path: Path) -> None:
    """Write an index already built (in memory or mapped) in ``write_index``'s format, without rescanning."""
    with open(index_path, "wb") as out:
        out.write(_HEAD.pack(_MAGIC, len(index.keys)))
        out.write(index.keys)       # type: ignore[arg-type]  # array('Q') or a memoryview: both buffers
        out.write(index.offsets)    # type: ignore[arg-type]


def map_index(der_path: Path, index_path: Path) -> RevokedIndex:
    """Map an index written by ``write_index`` and its DER file, read-only.

    The maps outlive the files' names: the index file is removed right after, and the DER file
    can be replaced by rename (the cache does) without touching the CRL in force.
    """
    with open(index_path, "rb") as f:
        imap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with open(der_path, "rb") as f:
        dmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    magic, n = _HEAD.unpack_from(imap, 0)
    if magic != _MAGIC or len(imap) != _HEAD.size + 12 * n:
        raise CrlRejected("parse_error", f"index file {index_path} is not a sniproxy index")
    view = memoryview(imap)
    start = _HEAD.size
    keys = view[start:start + 8 * n].cast("Q")
    offsets = view[start + 8 * n:start + 12 * n].cast("I")
    return RevokedIndex(keys, offsets, dmap)


EMPTY_INDEX = RevokedIndex(array("Q"), array("I"), b"")
