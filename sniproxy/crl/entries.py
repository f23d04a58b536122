"""Walk the revokedCertificates of a CRL straight in its DER bytes.

Why not iterate ``cryptography``'s CRL: it builds several Python objects per entry (the entry, its
extensions, a datetime), about 6 s per million entries, and IGC CPS CRLs are large. ``scan`` reads
only where each entry starts and the low 64 bits of its serial (about 1 s per million); the date
and reason of an entry are read by ``read_entry`` when a lookup hits it. It runs only on a CRL that
``cryptography`` has parsed and whose signature ``validate`` has checked, and it is strict anyway:
any tag or length it does not expect is a ``CrlRejected("parse_error")``, and the caller compares
the entry count with ``cryptography``'s own.
"""

from __future__ import annotations

import calendar
import mmap
from typing import TypeAlias

from sniproxy.crl.errors import CrlRejected

_SEQ, _INT, _UTC, _GEN, _BOOL, _OCTETS, _ENUM = 0x30, 0x02, 0x17, 0x18, 0x01, 0x04, 0x0A
_REASON_OID = bytes.fromhex("0603551d15")  # id-ce-cRLReasons, 2.5.29.21
NO_REASON = 255
MASK64 = (1 << 64) - 1


#: What the walker reads: bytes, or a read-only map of a DER file.
Buffer: TypeAlias = bytes | mmap.mmap


def _bad(what: str, pos: int) -> CrlRejected:
    return CrlRejected("parse_error", f"CRL entry list: {what} at byte {pos}")


def der_header(buf: Buffer, pos: int, end: int) -> tuple[int, int, int]:
    """Tag, content start and content end of the DER element at ``pos`` (which must end by ``end``)."""
    if pos + 2 > end:
        raise _bad("truncated element", pos)
    tag = buf[pos]
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > end:
            raise _bad("bad length", pos)
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    if pos + n > end:
        raise _bad("length past its container", pos)
    return tag, pos, pos + n


def _time(raw: bytes, tag: int, pos: int) -> int:
    """POSIX seconds of a UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280 requires."""
    if tag == _UTC and len(raw) == 13 and raw[12] == 0x5A:
        year = int(raw[0:2])
        year += 1900 if year >= 50 else 2000
        rest = raw[2:12]
    elif tag == _GEN and len(raw) == 15 and raw[14] == 0x5A:
        year = int(raw[0:4])
        rest = raw[4:14]
    else:
        raise _bad("revocation date not in RFC 5280 form", pos)
    if not rest.isdigit():
        raise _bad("revocation date not in RFC 5280 form", pos)
    try:
        return calendar.timegm((year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]),
                                int(rest[8:10]), 0, 0, 0))
    except (ValueError, OverflowError):
        raise _bad("revocation date out of range", pos) from None


def _reason(buf: Buffer, pos: int, end: int) -> int:
    """The CRLReason code among entry extensions ``buf[pos:end]`` (a SEQUENCE OF Extension)."""
    tag, pos, end = der_header(buf, pos, end)
    if tag != _SEQ:
        raise _bad("entry extensions are not a SEQUENCE", pos)
    while pos < end:
        tag, start, stop = der_header(buf, pos, end)
        if tag != _SEQ:
            raise _bad("extension is not a SEQUENCE", pos)
        if buf[start:start + len(_REASON_OID)] == _REASON_OID:
            inner = start + len(_REASON_OID)
            tag, vpos, vend = der_header(buf, inner, stop)
            if tag == _BOOL:
                tag, vpos, vend = der_header(buf, vend, stop)
            if tag != _OCTETS:
                raise _bad("reasonCode value is not an OCTET STRING", inner)
            tag, rpos, rend = der_header(buf, vpos, vend)
            if tag != _ENUM or rend - rpos != 1:
                raise _bad("reasonCode is not a one-byte ENUMERATED", vpos)
            code = buf[rpos]
            return code if code <= 10 else 0
        pos = stop
    return NO_REASON


def entries_bounds(der: Buffer) -> tuple[int, int]:
    """Bounds of the revokedCertificates content in a CertificateList DER (empty when absent)."""
    tag, pos, end = der_header(der, 0, len(der))
    if tag != _SEQ or end != len(der):
        raise _bad("CertificateList is not one SEQUENCE", 0)
    tag, pos, end = der_header(der, pos, end)      # tbsCertList
    if tag != _SEQ:
        raise _bad("tbsCertList is not a SEQUENCE", pos)
    tag, start, stop = der_header(der, pos, end)
    if tag == _INT:                     # version
        pos = stop
        tag, start, stop = der_header(der, pos, end)
    for _ in range(2):                  # signature AlgorithmIdentifier, issuer Name
        if tag != _SEQ:
            raise _bad("unexpected field before the entries", pos)
        pos = stop
        tag, start, stop = der_header(der, pos, end)
    if tag not in (_UTC, _GEN):         # thisUpdate
        raise _bad("thisUpdate missing", pos)
    pos = stop
    if pos < end:
        tag, start, stop = der_header(der, pos, end)
        if tag in (_UTC, _GEN):         # nextUpdate
            pos = stop
            if pos < end:
                tag, start, stop = der_header(der, pos, end)
        if pos < end and tag == _SEQ:   # else [0] crlExtensions: no entries
            return start, stop
    return end, end


def scan(der: Buffer) -> list[int]:
    """Every entry as ``low64(serial) << 32 | offset of the entry in der``, in CRL order.

    One packed int per entry so a plain ``list.sort`` orders by serial key (the offset only breaks
    ties). ``der`` must be under 4 GiB (the size limit on fetches is far below).
    """
    pos, end = entries_bounds(der)
    if len(der) >= 1 << 32:
        raise _bad("CRL of 4 GiB or more", 0)
    out: list[int] = []
    add = out.append
    from_bytes = int.from_bytes
    hdr = der_header
    # This loop runs a million times for an IGC CPS CRL: the common short-form headers are read
    # inline; anything else goes through der_header, which checks every bound.
    while pos < end:
        if der[pos] == _SEQ and pos + 1 < end and der[pos + 1] < 0x80:
            start = pos + 2
            stop = start + der[pos + 1]
            if stop > end:
                raise _bad("entry past the list", pos)
        else:
            tag, start, stop = hdr(der, pos, end)
            if tag != _SEQ:
                raise _bad("entry is not a SEQUENCE", pos)
        tag, s0, s1 = hdr(der, start, stop)
        if tag != _INT or s1 == s0:
            raise _bad("entry serial is not an INTEGER", start)
        if s1 - s0 >= 8:
            # the low 64 bits of a two's complement integer are its last 8 bytes, unsigned
            key = from_bytes(der[s1 - 8:s1], "big")
        else:
            key = from_bytes(der[s0:s1], "big", signed=True) & MASK64
        add(key << 32 | pos)
        pos = stop
    return out


def read_entry(der: Buffer, offset: int) -> tuple[int, float | None, int]:
    """Serial, revocation date (None if unreadable) and reason code of the entry at ``offset``.

    The serial is read strictly (it decides revocation); the date and reason only inform the log,
    so a malformed one there is reported as unknown rather than hiding the revocation.
    """
    _, start, stop = der_header(der, offset, len(der))
    tag, s0, s1 = der_header(der, start, stop)
    if tag != _INT:
        raise _bad("entry serial is not an INTEGER", start)
    serial = int.from_bytes(der[s0:s1], "big", signed=True)
    try:
        tag, d0, d1 = der_header(der, s1, stop)
        when: float | None = float(_time(der[d0:d1], tag, d0))
    except CrlRejected:
        return serial, None, NO_REASON
    try:
        reason = NO_REASON if d1 == stop else _reason(der, d1, stop)
    except CrlRejected:
        reason = NO_REASON
    return serial, when, reason
