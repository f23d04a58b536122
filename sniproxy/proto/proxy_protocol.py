"""HAProxy PROXY protocol, versions 1 and 2, sans-IO: build headers to send, parse headers received.

Follows haproxy's ``doc/proxy-protocol.txt`` (2020/03/05 revision, as shipped with haproxy 2.8).

Owns: the v2 binary encoding (addresses, TLVs, the optional CRC32c checksum), the TLV helpers
(``PP2_TYPE_SSL`` and its sub-TLVs, application TLVs 0xE0-0xEF) and an incremental parser of
the v1 and v2 headers a trusted load balancer puts in front of a connection. Must not do I/O,
know about sockets or clocks, or decide whether a peer may send a header at all: the caller only
runs the parser on connections from configured load balancers (spec section 5).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypedDict

from sniproxy.errors import SniproxyError

# --- wire constants (spec section 2.2) -------------------------------------------------------

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY"
V2_HEADER_LEN: Final = 16            # signature + ver_cmd + fam + len
MAX_V1_LINE: Final = 107             # worst-case v1 line, CRLF included (section 2.1)
MAX_V2_HEADER: Final = V2_HEADER_LEN + 0xFFFF

# Dovecot 2.3 drops a PROXY header larger than this; keep headers sent to it under that size.
MAX_HEADER: Final = 1500

PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
PP2_TYPE_NETNS: Final = 0x30
PP2_TYPE_MIN_CUSTOM: Final = 0xE0
PP2_TYPE_MAX_CUSTOM: Final = 0xEF

PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04

MAX_TLV_VALUE: Final = 0xFFFF        # the TLV length field is 16 bits
MAX_UNIQUE_ID: Final = 128           # section 2.2.5

_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1
_FAM_UNSPEC: Final = 0x00
_FAM_TCP4: Final = 0x11
_FAM_TCP6: Final = 0x21
# Every family/transport byte the spec lists, with its address block length (section 2.2).
_ADDR_LEN: Final[dict[int, int]] = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_CRC_PLACEHOLDER: Final = b"\x00\x00\x00\x00"

Command = Literal["PROXY", "LOCAL"]
Address = tuple[str, int]
Tlv = tuple[int, bytes]

# --- errors and results -----------------------------------------------------------------------

NO_PROXY_HEADER: Final = "no_proxy_header"
V1_MALFORMED: Final = "v1_malformed"
V1_TOO_LONG: Final = "v1_too_long"
BAD_VERSION: Final = "bad_version"
BAD_COMMAND: Final = "bad_command"
BAD_FAMILY: Final = "bad_family"
UNSUPPORTED_FAMILY: Final = "unsupported_family"
BAD_LENGTH: Final = "bad_length"
TOO_LONG: Final = "too_long"
BAD_TLV: Final = "bad_tlv"
BAD_CRC: Final = "bad_crc"
MISSING_CRC: Final = "missing_crc"


class ProxyHeaderError(SniproxyError):
    """The bytes are not an acceptable PROXY header; the connection must be dropped (spec 2.1).

    ``reason`` is one of the stable words above (``no_proxy_header``, ``bad_crc``...) so logs and
    tests can match it; ``detail`` is free text for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """A complete, validated PROXY header and what came after it in the same ``feed``.

    ``src``/``dst`` are ``None`` when the real connection endpoints must be used: v2 LOCAL, v2
    PROXY over AF_UNSPEC, v1 UNKNOWN. ``tlvs`` lists every v2 TLV in wire order, CRC32C and NOOP
    included. ``consumed`` is the header length; ``rest`` belongs to the next protocol layer.
    """

    version: int
    command: str
    src: Address | None
    dst: Address | None
    tlvs: list[Tlv]
    consumed: int
    rest: bytes

    def tlv(self, tlv_type: int) -> bytes | None:
        """Value of the first TLV of that type, ``None`` if absent: most types appear at most once."""
        for t, value in self.tlvs:
            if t == tlv_type:
                return value
        return None


class SslTlvInfo(TypedDict):
    """Decoded ``PP2_TYPE_SSL`` value (section 2.2.6); strings are ``None`` when not sent."""

    client_flags: int
    verify: int
    version: str | None
    cn: str | None
    cipher: str | None
    sig_alg: str | None
    key_alg: str | None
    tlvs: list[Tlv]


# --- CRC32c (RFC 4960 appendix B, Castagnoli, reflected) ---------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray, value: int = 0) -> int:
    """CRC32c of ``data``; pass a previous result as ``value`` to continue over several chunks.

    Pure Python on purpose: headers are at most 64 KiB and usually under 100 bytes, which does not
    justify a compiled dependency.
    """
    table = _CRC32C_TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- TLV helpers ------------------------------------------------------------------------------


def _tlv_bytes(tlv_type: int, value: bytes) -> bytes:
    if isinstance(tlv_type, bool) or not isinstance(tlv_type, int) or not 0 <= tlv_type <= 0xFF:
        raise ValueError(f"TLV type {tlv_type!r} is not a byte")
    if not isinstance(value, bytes | bytearray):
        raise TypeError(f"TLV 0x{tlv_type:02x} value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_TLV_VALUE:
        raise ValueError(f"TLV 0x{tlv_type:02x} value of {len(value)} bytes exceeds {MAX_TLV_VALUE}")
    return struct.pack("!BH", tlv_type, len(value)) + bytes(value)


def custom_tlv(type: int, value: bytes) -> Tlv:
    """An application TLV: only 0xE0-0xEF are reserved for us, so any other type is refused."""
    if isinstance(type, bool) or not isinstance(type, int) or not PP2_TYPE_MIN_CUSTOM <= type <= PP2_TYPE_MAX_CUSTOM:
        raise ValueError(f"custom TLV type {type!r} is outside 0x{PP2_TYPE_MIN_CUSTOM:02X}-0x{PP2_TYPE_MAX_CUSTOM:02X}")
    _tlv_bytes(type, value)
    return (type, bytes(value))


def authority_tlv(host: str) -> Tlv:
    """``PP2_TYPE_AUTHORITY``: the SNI the client sent, so the backend can tell flows apart."""
    value = host.encode("utf-8")
    _tlv_bytes(PP2_TYPE_AUTHORITY, value)
    return (PP2_TYPE_AUTHORITY, value)


def alpn_tlv(protocol: bytes) -> Tlv:
    """``PP2_TYPE_ALPN``: the negotiated ALPN protocol, as bytes since RFC 7301 names are opaque."""
    _tlv_bytes(PP2_TYPE_ALPN, protocol)
    return (PP2_TYPE_ALPN, bytes(protocol))


def unique_id_tlv(value: bytes) -> Tlv:
    """``PP2_TYPE_UNIQUE_ID``: a connection id for log correlation; the spec caps it at 128 bytes."""
    if len(value) > MAX_UNIQUE_ID:
        raise ValueError(f"unique ID of {len(value)} bytes exceeds {MAX_UNIQUE_ID}")
    return (PP2_TYPE_UNIQUE_ID, bytes(value))


def ssl_tlv(*, client_flags: int, verify: int, version: str | None = None, cn: str | None = None,
            cipher: str | None = None, sig_alg: str | None = None, key_alg: str | None = None) -> Tlv:
    """``PP2_TYPE_SSL``: how the client's TLS went, for a backend that never sees the handshake.

    ``verify`` is 0 when a client certificate was presented and verified. Sub-TLVs go out in
    the argument order, each only when not ``None``, UTF-8 encoded.
    """
    if isinstance(client_flags, bool) or not 0 <= client_flags <= 0xFF:
        raise ValueError(f"client_flags {client_flags!r} is not a byte")
    if isinstance(verify, bool) or not 0 <= verify <= 0xFFFFFFFF:
        raise ValueError(f"verify {verify!r} is not a 32-bit unsigned integer")
    parts = [struct.pack("!BI", client_flags, verify)]
    for sub_type, text in ((PP2_SUBTYPE_SSL_VERSION, version), (PP2_SUBTYPE_SSL_CN, cn),
                           (PP2_SUBTYPE_SSL_CIPHER, cipher), (PP2_SUBTYPE_SSL_SIG_ALG, sig_alg),
                           (PP2_SUBTYPE_SSL_KEY_ALG, key_alg)):
        if text is not None:
            parts.append(_tlv_bytes(sub_type, text.encode("utf-8")))
    value = b"".join(parts)
    _tlv_bytes(PP2_TYPE_SSL, value)
    return (PP2_TYPE_SSL, value)


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
    subs = [(t, bytes(value[s:e])) for t, s, e in _split_tlvs(value, 5, len(value))]
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


def _split_tlvs(block: bytes | bytearray, start: int, end: int) -> list[tuple[int, int, int]]:
    """``(type, value_start, value_end)`` of each TLV in ``block[start:end]``; offsets let the
    CRC check zero the checksum in place."""
    out = []
    pos = start
    while pos < end:
        if end - pos < 3:
            raise ProxyHeaderError(BAD_TLV, f"{end - pos} stray bytes where a TLV header is expected")
        tlv_type = block[pos]
        length = (block[pos + 1] << 8) | block[pos + 2]
        value_end = pos + 3 + length
        if value_end > end:
            raise ProxyHeaderError(BAD_TLV, f"TLV 0x{tlv_type:02x} of {length} bytes overruns its block")
        out.append((tlv_type, pos + 3, value_end))
        pos = value_end
    return out


# --- encoding ---------------------------------------------------------------------------------


def _endpoint(addr: Address, side: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = addr
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"{side} port {port!r} is not in 0-65535")
    if not isinstance(host, str):
        raise TypeError(f"{side} address must be a str, not {type(host).__name__}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"{side} address {host!r} is not an IP address") from exc
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; the backend wants IPv4.
            return ip.ipv4_mapped, port
        if ip.scope_id is not None:
            # The address block has no room for a zone; the address itself is still right.
            ip = ipaddress.IPv6Address(ip.packed)
    return ip, port


def _to_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address((0xFFFF << 32) | int(ip))


def _address_block(src: Address, dst: Address) -> tuple[int, bytes]:
    s_ip, s_port = _endpoint(src, "source")
    d_ip, d_port = _endpoint(dst, "destination")
    if isinstance(s_ip, ipaddress.IPv4Address) and isinstance(d_ip, ipaddress.IPv4Address):
        return _FAM_TCP4, s_ip.packed + d_ip.packed + struct.pack("!HH", s_port, d_port)
    # The block has one family for both ends: a mixed pair travels as IPv6, IPv4 mapped.
    return _FAM_TCP6, _to_v6(s_ip).packed + _to_v6(d_ip).packed + struct.pack("!HH", s_port, d_port)


_crc32c = crc32c    # encode_v2's ``crc32c`` flag shadows the function inside its body


def encode_v2(*, command: Command, src: Address | None, dst: Address | None, tlvs: Sequence[Tlv] = (),
              crc32c: bool = False, max_size: int | None = None) -> bytes:
    """A complete PROXY v2 header (TCP over IPv4/IPv6), to write before any other byte.

    LOCAL (health checks) and PROXY without addresses go out as AF_UNSPEC with no address block;
    addresses given with LOCAL are not sent, since the receiver must ignore them (section 2.2).
    ``crc32c`` adds a ``PP2_TYPE_CRC32C`` TLV; ``max_size`` refuses headers the receiver would
    drop (see ``MAX_HEADER``). Raises ``ValueError`` on anything that cannot be encoded.
    """
    if command == "PROXY":
        ver_cmd = 0x20 | _CMD_PROXY
    elif command == "LOCAL":
        ver_cmd = 0x20 | _CMD_LOCAL
    else:
        raise ValueError(f"command must be 'PROXY' or 'LOCAL', not {command!r}")
    if command == "LOCAL" or (src is None and dst is None):
        fam, addr = _FAM_UNSPEC, b""
    elif src is None or dst is None:
        raise ValueError("src and dst must both be given or both be None")
    else:
        fam, addr = _address_block(src, dst)
    parts = []
    for tlv_type, value in tlvs:
        if tlv_type == PP2_TYPE_CRC32C:
            raise ValueError("the CRC32C TLV is computed by encode_v2: pass crc32c=True instead")
        parts.append(_tlv_bytes(tlv_type, value))
    # The checksum TLV goes first, as haproxy does: a corrupted length then still covers it, so
    # the damage shows as a bad checksum instead of a header that silently lost its checksum.
    crc_tlv = _tlv_bytes(PP2_TYPE_CRC32C, _CRC_PLACEHOLDER) if crc32c else b""
    body = addr + crc_tlv + b"".join(parts)
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 address and TLV block of {len(body)} bytes exceeds 65535")
    header = bytearray(V2_SIGNATURE)
    header += struct.pack("!BBH", ver_cmd, fam, len(body))
    header += body
    if max_size is not None and len(header) > max_size:
        raise ValueError(f"PROXY v2 header of {len(header)} bytes exceeds max_size {max_size}")
    if crc32c:
        at = V2_HEADER_LEN + len(addr) + 3
        # Network byte order, as haproxy writes and reads it (write_n32/read_n32).
        header[at:at + 4] = _crc32c(header).to_bytes(4, "big")
    return bytes(header)


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
            if buf[12] & 0x0F not in (_CMD_LOCAL, _CMD_PROXY):
                raise ProxyHeaderError(BAD_COMMAND, f"command 0x{buf[12] & 0x0F:x}")
        if start < 14 <= len(buf):
            _check_family(buf[12] & 0x0F, buf[13])
        if start < 16 <= len(buf):
            length = (buf[14] << 8) | buf[15]
            total = V2_HEADER_LEN + length
            if total > self._max_v2:
                raise ProxyHeaderError(TOO_LONG, f"v2 header of {total} bytes exceeds {self._max_v2}")
            if length < _ADDR_LEN[buf[13]]:
                raise ProxyHeaderError(BAD_LENGTH, f"length {length} is shorter than the address block")
            self._total = total

    def _parse_v2(self) -> _Parsed:
        hdr = self._buf
        command, fam = hdr[12] & 0x0F, hdr[13]
        alen = _ADDR_LEN[fam]    # _check_family made sure it is a listed one
        src: Address | None = None
        dst: Address | None = None
        if command == _CMD_PROXY and fam == _FAM_TCP4:
            s, d, sp, dp = struct.unpack_from("!4s4sHH", hdr, V2_HEADER_LEN)
            src, dst = (str(ipaddress.IPv4Address(s)), sp), (str(ipaddress.IPv4Address(d)), dp)
        elif command == _CMD_PROXY and fam == _FAM_TCP6:
            s, d, sp, dp = struct.unpack_from("!16s16sHH", hdr, V2_HEADER_LEN)
            src, dst = (str(ipaddress.IPv6Address(s)), sp), (str(ipaddress.IPv6Address(d)), dp)
        spans = _split_tlvs(hdr, V2_HEADER_LEN + alen, len(hdr))
        crcs = [(s, e) for t, s, e in spans if t == PP2_TYPE_CRC32C]
        if len(crcs) > 1:
            raise ProxyHeaderError(BAD_TLV, "more than one CRC32C TLV")
        if crcs:
            s, e = crcs[0]
            if e - s != 4:
                raise ProxyHeaderError(BAD_TLV, f"CRC32C TLV of {e - s} bytes, expected 4")
            received = int.from_bytes(hdr[s:e], "big")
            computed = crc32c(hdr[:s] + _CRC_PLACEHOLDER + hdr[e:])
            if computed != received:
                raise ProxyHeaderError(BAD_CRC, f"checksum 0x{received:08x}, computed 0x{computed:08x}")
        elif self._require_crc:
            raise ProxyHeaderError(MISSING_CRC, "no CRC32C TLV")
        tlvs = [(t, bytes(hdr[s:e])) for t, s, e in spans]
        return 2, "LOCAL" if command == _CMD_LOCAL else "PROXY", src, dst, tlvs


_Parsed = tuple[int, str, Address | None, Address | None, list[Tlv]]


def _check_family(command: int, fam: int) -> None:
    """LOCAL accepts every family the spec lists (its addresses are ignored); PROXY only TCP or
    AF_UNSPEC, since anything else would leave the real client address unknown."""
    if fam >> 4 > 3 or fam & 0x0F > 2:
        raise ProxyHeaderError(BAD_FAMILY, f"family/transport byte 0x{fam:02x}")
    if fam not in _ADDR_LEN:
        # Valid nibbles, but a combination the spec does not list, so no known address length.
        raise ProxyHeaderError(UNSUPPORTED_FAMILY if command == _CMD_PROXY else BAD_FAMILY,
                               f"family/transport byte 0x{fam:02x}")
    if command == _CMD_PROXY and fam not in (_FAM_UNSPEC, _FAM_TCP4, _FAM_TCP6):
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
