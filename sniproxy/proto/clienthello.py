"""Incremental TLS ClientHello parser, sans-IO: what the flow choice needs, before any TLS state.

Owns: reading the record layer (RFC 8446 §5.1) until one complete ClientHello handshake message
(§4.1.2, possibly spread over several records) and extracting SNI (RFC 6066 §3), ALPN (RFC 7301
§3.1) and supported_versions (RFC 8446 §4.2.1). Must not do I/O, and does not keep the bytes for
the caller: ``feed`` copies what it needs, and the caller keeps every raw byte it received so it
can hand them, unchanged, to the TLS engine of the chosen flow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sniproxy.errors import Reason, SniproxyError

_HANDSHAKE = 0x16               # ContentType.handshake (RFC 8446 §5.1)
_CLIENT_HELLO = 1               # HandshakeType.client_hello (§4)
_MAX_FRAGMENT = 1 << 14         # TLSPlaintext.length MUST NOT exceed 2^14 (§5.1)
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class ClientHelloError(SniproxyError):
    """The bytes are not a well-formed TLS ClientHello; ``str()`` says what was wrong."""

    REASON = Reason.BAD_CLIENT_HELLO


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    """What the ClientHello says about where the client wants to go."""

    sni: str | None                        # host_name, lower-cased; None when absent
    alpn: tuple[str, ...]                  # protocol names in client order (latin-1 decoded)
    supported_versions: tuple[int, ...]    # e.g. 0x0304 for TLS 1.3; empty when absent
    legacy_version: int                    # ClientHello.legacy_version, e.g. 0x0303


class ClientHelloParser:
    """Feed raw bytes as they arrive; get a ``ClientHelloInfo`` once the ClientHello is complete.

    ``max_size`` bounds the raw bytes examined (record headers included). Bytes after the
    ClientHello are ignored. After an error every further ``feed`` raises again.
    """

    __slots__ = ("_error", "_hs", "_info", "_max", "_rec", "_seen")

    def __init__(self, max_size: int = _MAX_FRAGMENT + 5) -> None:
        self._max = max_size
        self._rec = bytearray()      # raw bytes of the record being read (header + fragment)
        self._hs = bytearray()       # handshake bytes gathered from complete records
        self._seen = 0               # raw bytes consumed so far
        self._info: ClientHelloInfo | None = None
        self._error: str | None = None

    def feed(self, data: bytes) -> ClientHelloInfo | None:
        """Examine more raw bytes; return the info when complete, ``None`` when more are needed.

        Raises ``ClientHelloError`` as soon as the bytes cannot be the start of a ClientHello.
        """
        if self._error is not None:
            raise ClientHelloError(self._error)
        if self._info is not None:
            return self._info
        try:
            return self._feed(data)
        except ClientHelloError as exc:
            self._error = str(exc)
            raise

    def _feed(self, data: bytes) -> ClientHelloInfo | None:
        pos = 0
        while pos < len(data):
            if len(self._rec) < 5:
                take = min(5 - len(self._rec), len(data) - pos)
            else:
                take = min(5 + self._fragment_len() - len(self._rec), len(data) - pos)
            self._rec += data[pos:pos + take]
            pos += take
            self._seen += take
            if self._seen > self._max:
                raise ClientHelloError(f"ClientHello larger than {self._max} bytes")
            # Checked after every piece, even a partial header: garbage is refused at once.
            if not self._check_record():
                continue
            self._hs += self._rec[5:]
            self._rec.clear()
            info = self._check_handshake()
            if info is not None:
                self._info = info
                return info
        return None

    def _fragment_len(self) -> int:
        return int.from_bytes(self._rec[3:5], "big")

    def _check_record(self) -> bool:
        """Validate the record header read so far; True when the whole record is present."""
        rec = self._rec
        if rec and rec[0] != _HANDSHAKE:
            raise ClientHelloError(f"not a TLS handshake record (first byte 0x{rec[0]:02x})")
        if len(rec) >= 2 and rec[1] != 3:
            # legacy_record_version is 0x0301..0x0303 in practice; major 3 for every TLS/SSLv3.
            raise ClientHelloError(f"bad record version major {rec[1]}")
        if len(rec) < 5:
            return False
        length = self._fragment_len()
        if length == 0 or length > _MAX_FRAGMENT:
            # RFC 8446 §5.1: no zero-length handshake fragments, none over 2^14.
            raise ClientHelloError(f"bad record length {length}")
        return len(rec) == 5 + length

    def _check_handshake(self) -> ClientHelloInfo | None:
        hs = self._hs
        if hs[0] != _CLIENT_HELLO:
            raise ClientHelloError(f"handshake message type {hs[0]} is not ClientHello")
        if len(hs) < 4:
            return None
        length = int.from_bytes(hs[1:4], "big")
        if length + 4 + 5 > self._max:
            raise ClientHelloError(f"ClientHello of {length} bytes is too big")
        if len(hs) < 4 + length:
            return None
        return _parse_body(bytes(hs[4:4 + length]))


class _Reader:
    """Bounds-checked reads over one byte string (every vector length checked, RFC 8446 §3.4)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ClientHelloError(f"truncated {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, len_bytes: int, what: str) -> bytes:
        return self.take(self.uint(len_bytes, what), what)

    def done(self) -> bool:
        return self.pos == len(self.data)


def _parse_body(body: bytes) -> ClientHelloInfo:
    """Parse a ClientHello body (RFC 8446 §4.1.2; TLS 1.2 form, RFC 5246 §7.4.1.2, also accepted)."""
    r = _Reader(body)
    legacy_version = r.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise ClientHelloError(f"bad ClientHello version 0x{legacy_version:04x}")
    r.take(32, "random")
    if len(r.vector(1, "session id")) > 32:
        raise ClientHelloError("session id longer than 32 bytes")
    suites = r.vector(2, "cipher suites")
    if not suites or len(suites) % 2:
        raise ClientHelloError("bad cipher suites length")
    if not r.vector(1, "compression methods"):
        raise ClientHelloError("no compression method")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if r.done():   # extensions may be absent before TLS 1.3 (RFC 5246 §7.4.1.2)
        return ClientHelloInfo(None, (), (), legacy_version)
    exts = _Reader(r.vector(2, "extensions"))
    if not r.done():
        raise ClientHelloError("bytes after extensions")
    seen: set[int] = set()
    while not exts.done():
        ext_type = exts.uint(2, "extension type")
        ext = exts.vector(2, "extension")
        if ext_type in seen:
            raise ClientHelloError(f"duplicate extension {ext_type}")  # RFC 8446 §4.2
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _server_name(ext)
        elif ext_type == _EXT_ALPN:
            alpn = _alpn(ext)
        elif ext_type == _EXT_SUPPORTED_VERSIONS:
            versions = _versions(ext)
    return ClientHelloInfo(sni, alpn, versions, legacy_version)


def _server_name(ext: bytes) -> str | None:
    """RFC 6066 §3: ServerNameList; at most one host_name (type 0), a DNS name without trailing dot."""
    outer = _Reader(ext)
    names = _Reader(outer.vector(2, "server name list"))
    if not outer.done():
        raise ClientHelloError("bytes after server name list")
    host: str | None = None
    while not names.done():
        name_type = names.uint(1, "server name type")
        name = names.vector(2, "server name")
        if name_type != 0:
            continue
        if host is not None:
            raise ClientHelloError("more than one host_name")
        host = _hostname(name)
    return host


def _hostname(raw: bytes) -> str:
    if not raw or len(raw) > 253 or not raw.isascii():
        raise ClientHelloError("SNI is not an ASCII host name")
    name = raw.decode("ascii").lower()
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ClientHelloError("SNI is not a valid host name")
    return name


def _alpn(ext: bytes) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolNameList, each name 1..255 opaque bytes."""
    outer = _Reader(ext)
    names = _Reader(outer.vector(2, "ALPN list"))
    if not outer.done():
        raise ClientHelloError("bytes after ALPN list")
    out: list[str] = []
    while not names.done():
        name = names.vector(1, "ALPN name")
        if not name:
            raise ClientHelloError("empty ALPN name")
        out.append(name.decode("latin-1"))
    return tuple(out)


def _versions(ext: bytes) -> tuple[int, ...]:
    """RFC 8446 §4.2.1: ClientHello form, ProtocolVersion versions<2..254>."""
    outer = _Reader(ext)
    raw = outer.vector(1, "supported versions")
    if not outer.done() or not raw or len(raw) % 2:
        raise ClientHelloError("bad supported_versions")
    return tuple(int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2))
