"""HAProxy PROXY protocol, versions 1 and 2, sans-IO: build headers to send, parse headers received.

Follows haproxy's ``doc/proxy-protocol.txt`` (2020/03/05 revision, as shipped with haproxy 2.8).

Owns: an incremental parser of the v1 and v2 headers a trusted load balancer puts in front of a
connection, and the decoding of a received ``PP2_TYPE_SSL`` TLV. The encoder sniproxy uses towards
its backends is ``proxy_encode``, the constants both share ``proxy_wire``; their public names are
re-exported here, the one import the rest of sniproxy (and the tests) use. Must not do I/O,
know about sockets or clocks, or decide whether a peer may send a header at all: the caller only
runs the parser on connections from configured load balancers (spec section 5).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Final

from sniproxy.proto.proxy_wire import (
    ADDR_LEN,
    BAD_COMMAND,
    BAD_CRC,
    BAD_FAMILY,
    BAD_LENGTH,
    BAD_TLV,
    BAD_VERSION,
    CMD_LOCAL,
    CMD_PROXY,
    CRC_PLACEHOLDER,
    FAM_TCP4,
    FAM_TCP6,
    FAM_UNSPEC,
    MAX_V1_LINE,
    MAX_V2_HEADER,
    MISSING_CRC,
    NO_PROXY_HEADER,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_CRC32C,
    TOO_LONG,
    UNSUPPORTED_FAMILY,
    V1_MALFORMED,
    V1_PREFIX,
    V1_TOO_LONG,
    V2_HEADER_LEN,
    V2_SIGNATURE,
    Address,
    ProxyHeaderError,
    ProxyResult,
    SslTlvInfo,
    Tlv,
    crc32c,
    split_tlvs,
)

_SSL_NAMES: Final[dict[int, str]] = {
    PP2_SUBTYPE_SSL_VERSION: "version",
    PP2_SUBTYPE_SSL_CN: "cn",
    PP2_SUBTYPE_SSL_CIPHER: "cipher",
    PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
    PP2_SUBTYPE_SSL_KEY_ALG: "key_alg",
}


def parse_ssl_tlv(value: bytes) -> SslTlvInfo:
    """Decode a ``PP2_TYPE_SSL`` value; raises ``ProxyHeaderError("bad_tlv")`` when malformed.

    Every sub-TLV is kept in ``tlvs`` (unknown ones too); the known string ones are also decoded.
    A known subtype seen twice is an error rather than a silent pick of one of them.
    """
    if len(value) < 5:
        raise ProxyHeaderError(BAD_TLV, f"SSL TLV of {len(value)} bytes is shorter than 5")
    client_flags, verify = struct.unpack("!BI", value[:5])
    subs = [(t, bytes(value[s:e])) for t, s, e in split_tlvs(value, 5, len(value))]
    texts: dict[str, str] = {}
    for sub_type, raw in subs:
        name = _SSL_NAMES.get(sub_type)
        if name is None:
            continue
        if name in texts:
            raise ProxyHeaderError(BAD_TLV, f"SSL sub-TLV {name} appears twice")
        try:
            texts[name] = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProxyHeaderError(BAD_TLV, f"SSL sub-TLV {name} is not UTF-8") from exc
    return SslTlvInfo(client_flags=client_flags, verify=verify, version=texts.get("version"),
                      cn=texts.get("cn"), cipher=texts.get("cipher"), sig_alg=texts.get("sig_alg"),
                      key_alg=texts.get("key_alg"), tlvs=subs)


# --- decoding ---------------------------------------------------------------------------------

_DETECT: Final = 0
_V1: Final = 1
_V2: Final = 2

_V1_FAMILIES: Final = (b"TCP4 ", b"TCP6 ", b"UNKNOWN\r", b"UNKNOWN ")
_V1_ADDR_CHARS: Final = frozenset(b"0123456789abcdefABCDEF:. \r\n")
_V1_PORT: Final = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_IPV4: Final = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_V1_IPV6: Final = re.compile(rb"[0-9A-Fa-f:.]{2,45}")


class ProxyHeaderParser:
    """Feed the first bytes of an accepted connection; get a ``ProxyResult`` once the header is whole.

    Only for connections from trusted load balancers: the header decides the client address the
    rest of sniproxy believes. Garbage is refused as soon as a byte proves it (a TLS ClientHello
    or an IMAP command fails on its first byte), and the parser never takes a byte beyond the
    header: whatever followed it in the same ``feed`` is returned in ``ProxyResult.rest``.

    ``max_v1`` bounds the v1 line (CRLF included); ``max_v2`` bounds the whole v2 header and is
    checked as soon as the length field arrives. With ``require_crc32c`` a header without a
    checksum (every v1 header included) is refused, which is what makes corruption detectable.
    After an error every further ``feed`` raises again; after a result, ``feed`` is a bug.
    """

    __slots__ = ("_buf", "_done", "_error", "_max_v1", "_max_v2", "_mode", "_require_crc", "_total")

    def __init__(self, max_v1: int = MAX_V1_LINE, max_v2: int = MAX_V2_HEADER, *,
                 require_crc32c: bool = False) -> None:
        if max_v1 < len(b"PROXY UNKNOWN\r\n"):
            raise ValueError("max_v1 is too small for the shortest v1 line")
        if max_v2 < V2_HEADER_LEN:
            raise ValueError(f"max_v2 must be at least {V2_HEADER_LEN}")
        self._max_v1 = max_v1
        self._max_v2 = max_v2
        self._require_crc = require_crc32c
        self._buf = bytearray()                 # header bytes so far, never more than the header
        self._mode = _DETECT
        self._total: int | None = None          # v2 header length, once the length field is read
        self._done = False
        self._error: ProxyHeaderError | None = None

    def feed(self, data: bytes) -> ProxyResult | None:
        """Take more received bytes; ``None`` means the header is not complete yet.

        Raises ``ProxyHeaderError`` as soon as the bytes cannot be a valid header.
        """
        if self._done:
            raise RuntimeError("PROXY header already parsed: later bytes belong to the next layer")
        if self._error is not None:
            raise ProxyHeaderError(self._error.reason, self._error.detail)
        try:
            return self._feed(data)
        except ProxyHeaderError as exc:
            self._error = exc
            raise

    def _feed(self, data: bytes) -> ProxyResult | None:
        buf = self._buf
        pos, n = 0, len(data)
        while pos < n:
            if self._mode == _DETECT:
                # One byte at a time: the signatures are short and differ from their first byte.
                buf.append(data[pos])
                pos += 1
                self._detect()
            elif self._mode == _V1:
                room = self._max_v1 - len(buf)
                lf = data.find(b"\n", pos, pos + room)
                end = min(n, pos + room) if lf < 0 else lf + 1
                start = len(buf)
                buf += data[pos:end]
                pos = end
                self._check_v1_partial(start)
                if lf >= 0:
                    return self._finish(self._parse_v1(), data[pos:])
                if len(buf) >= self._max_v1:
                    raise ProxyHeaderError(V1_TOO_LONG, f"no CRLF within {self._max_v1} bytes")
            else:
                goal = V2_HEADER_LEN if self._total is None else self._total
                take = min(goal - len(buf), n - pos)
                start = len(buf)
                buf += data[pos:pos + take]
                pos += take
                self._check_v2_fixed(start)
                if self._total is not None and len(buf) == self._total:
                    return self._finish(self._parse_v2(), data[pos:])
        return None

    def _finish(self, result: _Parsed, rest: bytes) -> ProxyResult:
        self._done = True
        version, command, src, dst, tlvs = result
        return ProxyResult(version=version, command=command, src=src, dst=dst, tlvs=tlvs,
                           consumed=len(self._buf), rest=bytes(rest))

    def _detect(self) -> None:
        buf = self._buf
        k = len(buf)
        if k <= len(V2_SIGNATURE) and buf == V2_SIGNATURE[:k]:
            if k == len(V2_SIGNATURE):
                self._mode = _V2
            return
        if k <= len(V1_PREFIX) and buf == V1_PREFIX[:k]:
            if k == len(V1_PREFIX):
                if self._require_crc:
                    raise ProxyHeaderError(MISSING_CRC, "a v1 header cannot carry a checksum")
                self._mode = _V1
            return
        raise ProxyHeaderError(NO_PROXY_HEADER, f"first bytes {bytes(buf)!r} start no PROXY header")

    # -- v1 --

    def _check_v1_partial(self, start: int) -> None:
        """Refuse a v1 line as soon as its prefix is wrong, rather than waiting for its CRLF."""
        line = self._buf
        if len(line) > 5 and line[5] != 0x20:
            raise ProxyHeaderError(V1_MALFORMED, "PROXY is not followed by one space")
        family = bytes(line[6:14])
        if family and not any(c[:len(family)] == family[:len(c)] for c in _V1_FAMILIES):
            raise ProxyHeaderError(V1_MALFORMED, f"unknown v1 protocol {family!r}")
        for i in range(max(start - 1, 0), len(line)):
            byte = line[i]
            if byte == 0x0D and i + 1 < len(line) and line[i + 1] != 0x0A:
                raise ProxyHeaderError(V1_MALFORMED, "CR not followed by LF")
            if byte == 0x0A and (i == 0 or line[i - 1] != 0x0D):
                raise ProxyHeaderError(V1_MALFORMED, "LF not preceded by CR")
        if family.startswith(b"TCP"):
            for i in range(max(start, 11), len(line)):
                if line[i] not in _V1_ADDR_CHARS:
                    raise ProxyHeaderError(V1_MALFORMED, f"byte 0x{line[i]:02x} in a TCP line")

    def _parse_v1(self) -> _Parsed:
        fields = bytes(self._buf[:-2]).split(b" ")   # the CRLF is checked by _check_v1_partial
        if fields[1] == b"UNKNOWN":
            # The receiver must ignore the rest of an UNKNOWN line and use the real endpoints.
            return 1, "PROXY", None, None, []
        if len(fields) != 6:
            raise ProxyHeaderError(V1_MALFORMED, f"{len(fields)} space-separated fields, expected 6")
        v6 = fields[1] == b"TCP6"
        src = (_v1_address(fields[2], v6), _v1_port(fields[4]))
        dst = (_v1_address(fields[3], v6), _v1_port(fields[5]))
        return 1, "PROXY", src, dst, []

    # -- v2 --

    def _check_v2_fixed(self, start: int) -> None:
        """Check bytes 13 to 16 as each arrives, so a bad one is refused before the rest."""
        buf = self._buf
        if start < 13 <= len(buf):
            if buf[12] >> 4 != 2:
                raise ProxyHeaderError(BAD_VERSION, f"version {buf[12] >> 4}, only 2 exists")
            if buf[12] & 0x0F not in (CMD_LOCAL, CMD_PROXY):
                raise ProxyHeaderError(BAD_COMMAND, f"command 0x{buf[12] & 0x0F:x}")
        if start < 14 <= len(buf):
            _check_family(buf[12] & 0x0F, buf[13])
        if start < 16 <= len(buf):
            length = (buf[14] << 8) | buf[15]
            total = V2_HEADER_LEN + length
            if total > self._max_v2:
                raise ProxyHeaderError(TOO_LONG, f"v2 header of {total} bytes exceeds {self._max_v2}")
            if length < ADDR_LEN[buf[13]]:
                raise ProxyHeaderError(BAD_LENGTH, f"length {length} is shorter than the address block")
            self._total = total

    def _parse_v2(self) -> _Parsed:
        hdr = self._buf
        command, fam = hdr[12] & 0x0F, hdr[13]
        alen = ADDR_LEN[fam]    # _check_family made sure it is a listed one
        src: Address | None = None
        dst: Address | None = None
        if command == CMD_PROXY and fam == FAM_TCP4:
            s, d, sp, dp = struct.unpack_from("!4s4sHH", hdr, V2_HEADER_LEN)
            src, dst = (str(ipaddress.IPv4Address(s)), sp), (str(ipaddress.IPv4Address(d)), dp)
        elif command == CMD_PROXY and fam == FAM_TCP6:
            s, d, sp, dp = struct.unpack_from("!16s16sHH", hdr, V2_HEADER_LEN)
            src, dst = (str(ipaddress.IPv6Address(s)), sp), (str(ipaddress.IPv6Address(d)), dp)
        spans = split_tlvs(hdr, V2_HEADER_LEN + alen, len(hdr))
        crcs = [(s, e) for t, s, e in spans if t == PP2_TYPE_CRC32C]
        if len(crcs) > 1:
            raise ProxyHeaderError(BAD_TLV, "more than one CRC32C TLV")
        if crcs:
            s, e = crcs[0]
            if e - s != 4:
                raise ProxyHeaderError(BAD_TLV, f"CRC32C TLV of {e - s} bytes, expected 4")
            received = int.from_bytes(hdr[s:e], "big")
            computed = crc32c(hdr[:s] + CRC_PLACEHOLDER + hdr[e:])
            if computed != received:
                raise ProxyHeaderError(BAD_CRC, f"checksum 0x{received:08x}, computed 0x{computed:08x}")
        elif self._require_crc:
            raise ProxyHeaderError(MISSING_CRC, "no CRC32C TLV")
        tlvs = [(t, bytes(hdr[s:e])) for t, s, e in spans]
        return 2, "LOCAL" if command == CMD_LOCAL else "PROXY", src, dst, tlvs


_Parsed = tuple[int, str, Address | None, Address | None, list[Tlv]]


def _check_family(command: int, fam: int) -> None:
    """LOCAL accepts every family the spec lists (its addresses are ignored); PROXY only TCP or
    AF_UNSPEC, since anything else would leave the real client address unknown."""
    if fam >> 4 > 3 or fam & 0x0F > 2:
        raise ProxyHeaderError(BAD_FAMILY, f"family/transport byte 0x{fam:02x}")
    if fam not in ADDR_LEN:
        # Valid nibbles, but a combination the spec does not list, so no known address length.
        raise ProxyHeaderError(UNSUPPORTED_FAMILY if command == CMD_PROXY else BAD_FAMILY,
                               f"family/transport byte 0x{fam:02x}")
    if command == CMD_PROXY and fam not in (FAM_UNSPEC, FAM_TCP4, FAM_TCP6):
        raise ProxyHeaderError(UNSUPPORTED_FAMILY, f"family/transport byte 0x{fam:02x} (only TCP)")


def _v1_address(token: bytes, v6: bool) -> str:
    try:
        if v6:
            if _V1_IPV6.fullmatch(token) is None:
                raise ValueError("not IPv6 characters")
            return str(ipaddress.IPv6Address(token.decode("ascii")))
        if _V1_IPV4.fullmatch(token) is None:
            raise ValueError("not dotted decimal")
        # Since Python 3.9.5 IPv4Address refuses leading zeros, which the spec forbids (no octal).
        return str(ipaddress.IPv4Address(token.decode("ascii")))
    except ValueError as exc:
        raise ProxyHeaderError(V1_MALFORMED, f"bad {'IPv6' if v6 else 'IPv4'} address {token!r}: {exc}") from exc


def _v1_port(token: bytes) -> int:
    if _V1_PORT.fullmatch(token) is None or int(token) > 0xFFFF:
        raise ProxyHeaderError(V1_MALFORMED, f"bad port {token!r}")
    return int(token)


def looks_like_header(first: bytes) -> bool | None:
    """Whether the first bytes of a connection start a PROXY header: True, False, or None (need more).

    For peers that are not trusted load balancers: a header from them is a spoofing attempt (or a
    misrouted load balancer) and is refused, never parsed. v1 is recognised by ``PROXY`` and a space,
    v2 by its 12-byte signature; at most 12 bytes are ever needed to tell.
    """
    for sig in (V1_PREFIX + b" ", V2_SIGNATURE):
        n = min(len(first), len(sig))
        if first[:n] == sig[:n]:
            return True if len(first) >= len(sig) else None
    return False
