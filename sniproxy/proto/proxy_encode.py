"""HAProxy PROXY protocol v2, sans-IO: build the header sniproxy sends to a backend, and its TLVs.

Owns: the v2 binary encoding (addresses, TLVs, the optional CRC32c checksum) and the TLV builders
(``PP2_TYPE_SSL`` and its sub-TLVs, authority, ALPN, unique ID, application TLVs 0xE0-0xEF).
Must not do I/O or parse received headers (``proxy_protocol``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from sniproxy.proto.proxy_wire import (
    CMD_LOCAL,
    CMD_PROXY,
    CRC_PLACEHOLDER,
    FAM_TCP4,
    FAM_TCP6,
    FAM_UNSPEC,
    MAX_TLV_VALUE,
    MAX_UNIQUE_ID,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_MAX_CUSTOM,
    PP2_TYPE_MIN_CUSTOM,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_HEADER_LEN,
    V2_SIGNATURE,
    Address,
    Command,
    Tlv,
    crc32c,
)

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
        return FAM_TCP4, s_ip.packed + d_ip.packed + struct.pack("!HH", s_port, d_port)
    # The block has one family for both ends: a mixed pair travels as IPv6, IPv4 mapped.
    return FAM_TCP6, _to_v6(s_ip).packed + _to_v6(d_ip).packed + struct.pack("!HH", s_port, d_port)


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
        ver_cmd = 0x20 | CMD_PROXY
    elif command == "LOCAL":
        ver_cmd = 0x20 | CMD_LOCAL
    else:
        raise ValueError(f"command must be 'PROXY' or 'LOCAL', not {command!r}")
    if command == "LOCAL" or (src is None and dst is None):
        fam, addr = FAM_UNSPEC, b""
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
    crc_tlv = _tlv_bytes(PP2_TYPE_CRC32C, CRC_PLACEHOLDER) if crc32c else b""
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
