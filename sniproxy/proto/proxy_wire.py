"""HAProxy PROXY protocol (haproxy ``doc/proxy-protocol.txt``): what the encoder and the parser share.

Owns: the wire constants (signatures, commands, families, TLV types), the stable error reasons and
``ProxyHeaderError``, the ``ProxyResult`` and ``SslTlvInfo`` shapes, CRC32c and the TLV block
splitter. Must not do I/O, encode or parse a whole header (``proxy_encode``, ``proxy_protocol``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypedDict

from sniproxy.errors import Reason, SniproxyError

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

CMD_LOCAL: Final = 0x0
CMD_PROXY: Final = 0x1
FAM_UNSPEC: Final = 0x00
FAM_TCP4: Final = 0x11
FAM_TCP6: Final = 0x21
# Every family/transport byte the spec lists, with its address block length (section 2.2).
ADDR_LEN: Final[dict[int, int]] = {0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
CRC_PLACEHOLDER: Final = b"\x00\x00\x00\x00"

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
    tests can match it; ``detail`` is free text for humans. The connection it ends ends with
    ``REASON`` (``bad_proxy_header``).
    """

    REASON = Reason.BAD_PROXY_HEADER

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




def split_tlvs(block: bytes | bytearray, start: int, end: int) -> list[tuple[int, int, int]]:
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
