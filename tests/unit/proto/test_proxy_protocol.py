"""PROXY protocol encoder and parser against the byte layouts of haproxy's proxy-protocol.txt.

Expected bytes are spelled out by hand from the specification (section 2.1 for v1, 2.2 for v2),
not produced by the code under test. Two fixtures were captured from haproxy 2.6 itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.errors import Reason
from sniproxy.proto.proxy_encode import alpn_tlv, authority_tlv, custom_tlv, encode_v2, ssl_tlv, unique_id_tlv
from sniproxy.proto.proxy_protocol import ProxyHeaderParser, parse_ssl_tlv
from sniproxy.proto.proxy_wire import (
    MAX_HEADER,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_KEY_ALG,
    PP2_SUBTYPE_SSL_SIG_ALG,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NETNS,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyResult,
    crc32c,
)

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"       # section 2.2, byte by byte
IMAP_CMD = b"a001 CAPABILITY\r\n"

# 192.0.2.1:56324 -> 198.51.100.7:143, PROXY, TCP over IPv4, no TLV.
TCP4_HEADER = (
    SIG
    + b"\x21"                   # version 2, command PROXY
    + b"\x11"                   # AF_INET, STREAM
    + b"\x00\x0c"               # 12 address bytes
    + b"\xc0\x00\x02\x01"       # 192.0.2.1
    + b"\xc6\x33\x64\x07"       # 198.51.100.7
    + b"\xdc\x04"               # 56324
    + b"\x00\x8f"               # 143
)

# Sent by haproxy 2.6.12 ("send-proxy-v2 proxy-v2-options crc32c,unique-id,authority",
# unique-id-format abc123) for a client announcing the TCP4 connection above.
HAPROXY_PROXY = bytes.fromhex(
    "0d0a0d0a000d0a515549540a2111002bc0000201c6336407dc04008f0300045ef53f69"
    "02000c696d61702e6578616d706c65050006616263313233"
)
# The health check of that server line ("check-send-proxy"): LOCAL, AF_UNSPEC, only a checksum.
HAPROXY_LOCAL = bytes.fromhex("0d0a0d0a000d0a515549540a20000007030004a9b87e8f")


def parse(data: bytes, **kwargs: Any) -> ProxyResult:
    result = ProxyHeaderParser(**kwargs).feed(data)
    assert result is not None
    return result


def parse_bytewise(data: bytes, **kwargs: Any) -> tuple[ProxyResult, bytes]:
    """Feed one byte at a time; return the result and the bytes not fed to the parser."""
    parser = ProxyHeaderParser(**kwargs)
    for i in range(len(data)):
        result = parser.feed(data[i:i + 1])
        if result is not None:
            return result, data[i + 1:]
    raise AssertionError("header never completed")


def reason(data: bytes, **kwargs: Any) -> str:
    with pytest.raises(ProxyHeaderError) as info:
        ProxyHeaderParser(**kwargs).feed(data)
    return info.value.reason


# --- CRC32c -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),                     # the CRC catalogue check value
    (bytes(32), 0x8A9136AA),                        # RFC 3720 B.4: 32 bytes of zeros
    (b"\xff" * 32, 0x62A8AB43),                     # RFC 3720 B.4: 32 bytes of ones
    (bytes(range(32)), 0x46DD794E),                 # RFC 3720 B.4: incrementing
    (bytes(range(31, -1, -1)), 0x113FDB5C),         # RFC 3720 B.4: decrementing
])
def test_crc32c_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


def test_crc32c_continues_over_chunks() -> None:
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


# --- encoding -----------------------------------------------------------------------------------


def test_constants_match_the_spec() -> None:
    assert V2_SIGNATURE == SIG
    assert (PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_UNIQUE_ID) == (1, 2, 3, 4, 5)
    assert (PP2_TYPE_SSL, PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_CIPHER,
            PP2_SUBTYPE_SSL_SIG_ALG, PP2_SUBTYPE_SSL_KEY_ALG, PP2_TYPE_NETNS) == (0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
                                                                                0x30)
    assert (PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS) == (1, 2, 4)
    assert MAX_HEADER == 1500


def test_encode_tcp4_exact() -> None:
    assert encode_v2(command="PROXY", src=("192.0.2.1", 56324), dst=("198.51.100.7", 143), tlvs=[]) == TCP4_HEADER


def test_encode_tcp6_exact() -> None:
    expected = (
        SIG + b"\x21" + b"\x21" + b"\x00\x24"                        # PROXY, AF_INET6 STREAM, 36 bytes
        + b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01"              # 2001:db8::1
        + b"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"   # 2001:db8::2
        + b"\x9c\x40"                                               # 40000
        + b"\x03\xe1"                                               # 993
    )
    assert encode_v2(command="PROXY", src=("2001:db8::1", 40000), dst=("2001:db8::2", 993), tlvs=[]) == expected
    result = parse(expected)
    assert (result.version, result.command) == (2, "PROXY")
    assert result.src == ("2001:db8::1", 40000)
    assert result.dst == ("2001:db8::2", 993)
    assert result.consumed == 52


def test_encode_local_exact() -> None:
    header = encode_v2(command="LOCAL", src=None, dst=None, tlvs=[])
    assert header == SIG + b"\x20\x00\x00\x00"
    assert parse(header) == ProxyResult(2, "LOCAL", None, None, [], 16, b"")


def test_encode_local_drops_addresses() -> None:
    header = encode_v2(command="LOCAL", src=("192.0.2.1", 1), dst=("192.0.2.2", 2), tlvs=[])
    assert header == SIG + b"\x20\x00\x00\x00"


def test_encode_proxy_without_addresses_is_unspec() -> None:
    header = encode_v2(command="PROXY", src=None, dst=None, tlvs=[])
    assert header == SIG + b"\x21\x00\x00\x00"
    assert parse(header) == ProxyResult(2, "PROXY", None, None, [], 16, b"")


def test_encode_ipv4_mapped_goes_out_as_ipv4() -> None:
    header = encode_v2(command="PROXY", src=("::ffff:192.0.2.1", 56324), dst=("::ffff:198.51.100.7", 143), tlvs=[])
    assert header == TCP4_HEADER


def test_encode_mixed_families_go_out_as_ipv6() -> None:
    header = encode_v2(command="PROXY", src=("192.0.2.1", 1), dst=("2001:db8::2", 2), tlvs=[])
    assert header == (
        SIG + b"\x21\x21\x00\x24"
        + b"\x00" * 10 + b"\xff\xff" + b"\xc0\x00\x02\x01"          # ::ffff:192.0.2.1
        + b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x02"              # 2001:db8::2
        + b"\x00\x01\x00\x02"
    )
    assert parse(header).src == (str(ipaddress.IPv6Address("::ffff:192.0.2.1")), 1)


def test_encode_drops_ipv6_zone() -> None:
    plain = encode_v2(command="PROXY", src=("fe80::1", 1), dst=("fe80::2", 2), tlvs=[])
    assert encode_v2(command="PROXY", src=("fe80::1%eth0", 1), dst=("fe80::2", 2), tlvs=[]) == plain


def test_encode_authority_tlv_exact() -> None:
    header = encode_v2(command="PROXY", src=("192.0.2.1", 56324), dst=("198.51.100.7", 143),
                       tlvs=[authority_tlv("imap.example")])
    tlv = b"\x02" + b"\x00\x0c" + b"imap.example"
    assert header == TCP4_HEADER[:14] + b"\x00\x1b" + TCP4_HEADER[16:] + tlv
    result = parse(header)
    assert result.tlvs == [(PP2_TYPE_AUTHORITY, b"imap.example")]
    assert result.tlv(PP2_TYPE_AUTHORITY) == b"imap.example"
    assert result.tlv(PP2_TYPE_SSL) is None


def test_ssl_tlv_exact() -> None:
    tlv = ssl_tlv(client_flags=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, verify=0,
                  version="TLSv1.3", cn="Élise", cipher="TLS_AES_128_GCM_SHA256", sig_alg=None, key_alg=None)
    value = (
        b"\x07"                                     # client: SSL | CERT_CONN | CERT_SESS
        + b"\x00\x00\x00\x00"                       # verify: 0, certificate verified
        + b"\x21\x00\x07" + b"TLSv1.3"              # PP2_SUBTYPE_SSL_VERSION
        + b"\x22\x00\x06" + b"\xc3\x89lise"         # PP2_SUBTYPE_SSL_CN, UTF-8 (E acute is 2 bytes)
        + b"\x23\x00\x16" + b"TLS_AES_128_GCM_SHA256"   # PP2_SUBTYPE_SSL_CIPHER, 22 bytes
    )
    assert tlv == (0x20, value)
    header = encode_v2(command="PROXY", src=("192.0.2.1", 56324), dst=("198.51.100.7", 143), tlvs=[tlv])
    assert header[14:16] == (12 + 3 + len(value)).to_bytes(2, "big")
    assert header[28:31] == b"\x20\x00" + bytes([len(value)])
    assert header[31:] == value
    info = parse_ssl_tlv(parse(header).tlvs[0][1])
    assert info == {
        "client_flags": 7, "verify": 0, "version": "TLSv1.3", "cn": "Élise",
        "cipher": "TLS_AES_128_GCM_SHA256", "sig_alg": None, "key_alg": None,
        "tlvs": [(0x21, b"TLSv1.3"), (0x22, "Élise".encode()), (0x23, b"TLS_AES_128_GCM_SHA256")],
    }


def test_ssl_tlv_subtlv_order_and_verify() -> None:
    _, value = ssl_tlv(client_flags=PP2_CLIENT_SSL, verify=0x01020304, version=None, cn="x", cipher=None,
                       sig_alg="RSA-SHA256", key_alg="RSA2048")
    assert value == (b"\x01\x01\x02\x03\x04" + b"\x22\x00\x01x" + b"\x24\x00\x0aRSA-SHA256"
                     + b"\x25\x00\x07RSA2048")
    info = parse_ssl_tlv(value)
    assert (info["verify"], info["sig_alg"], info["key_alg"], info["version"]) == (0x01020304, "RSA-SHA256",
                                                                                   "RSA2048", None)


@pytest.mark.parametrize("kwargs", [
    {"client_flags": 256, "verify": 0},
    {"client_flags": -1, "verify": 0},
    {"client_flags": 1, "verify": 1 << 32},
    {"client_flags": 1, "verify": 0, "cn": "x" * 65536},
    {"client_flags": 1, "verify": 0, "cn": "x" * 40000, "cipher": "y" * 40000},
])
def test_ssl_tlv_refuses(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ssl_tlv(**kwargs)


@pytest.mark.parametrize("value", [
    b"\x01\x00\x00\x00",                            # shorter than client + verify
    b"\x01\x00\x00\x00\x00\x22\x00\x05abc",         # sub-TLV overruns
    b"\x01\x00\x00\x00\x00\x22\x00",                # truncated sub-TLV header
    b"\x01\x00\x00\x00\x00\x22\x00\x01a\x22\x00\x01b",   # CN twice
    b"\x01\x00\x00\x00\x00\x22\x00\x01\xff",        # CN not UTF-8
])
def test_parse_ssl_tlv_refuses(value: bytes) -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse_ssl_tlv(value)
    assert info.value.reason == "bad_tlv"


def test_parse_ssl_tlv_keeps_unknown_subtypes() -> None:
    info = parse_ssl_tlv(b"\x00\xff\xff\xff\xff\x99\x00\x02hi")
    assert info["verify"] == 0xFFFFFFFF
    assert info["tlvs"] == [(0x99, b"hi")]
    assert info["cn"] is None


def test_custom_tlv_range() -> None:
    assert custom_tlv(0xE0, b"a") == (0xE0, b"a")
    assert custom_tlv(0xEF, b"") == (0xEF, b"")
    for bad in (0x00, PP2_TYPE_SSL, 0xDF, 0xF0, 0xFF, 0x1E0, -1):
        with pytest.raises(ValueError):
            custom_tlv(bad, b"a")
    with pytest.raises(ValueError):
        custom_tlv(0xE0, b"x" * 65536)
    assert custom_tlv(0xE0, b"x" * 65535)[1] == b"x" * 65535


def test_other_tlv_helpers() -> None:
    assert alpn_tlv(b"imap") == (PP2_TYPE_ALPN, b"imap")
    assert unique_id_tlv(b"u" * 128) == (PP2_TYPE_UNIQUE_ID, b"u" * 128)
    with pytest.raises(ValueError):
        unique_id_tlv(b"u" * 129)


@pytest.mark.parametrize("kwargs", [
    {"command": "proxy", "src": None, "dst": None},
    {"command": "PROXY", "src": ("192.0.2.1", 1), "dst": None},
    {"command": "PROXY", "src": None, "dst": ("192.0.2.1", 1)},
    {"command": "PROXY", "src": ("192.0.2.1", 65536), "dst": ("192.0.2.2", 1)},
    {"command": "PROXY", "src": ("192.0.2.1", -1), "dst": ("192.0.2.2", 1)},
    {"command": "PROXY", "src": ("192.0.2.256", 1), "dst": ("192.0.2.2", 1)},
    {"command": "PROXY", "src": ("imap.example", 1), "dst": ("192.0.2.2", 1)},
    {"command": "PROXY", "src": None, "dst": None, "tlvs": [(PP2_TYPE_CRC32C, b"\0\0\0\0")]},
    {"command": "PROXY", "src": None, "dst": None, "tlvs": [(0x100, b"")]},
    {"command": "PROXY", "src": None, "dst": None, "tlvs": [(0xE0, b"x" * 65536)]},
    {"command": "PROXY", "src": None, "dst": None, "tlvs": [(0xE0, b"x" * 40000), (0xE1, b"x" * 40000)]},
])
def test_encode_refuses(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("tlvs", [])
    with pytest.raises(ValueError):
        encode_v2(**kwargs)


def test_max_size() -> None:
    src, dst = ("192.0.2.1", 56324), ("198.51.100.7", 143)
    # 28 bytes of header and addresses, 3 of TLV header: this value makes exactly MAX_HEADER bytes.
    fits = [custom_tlv(0xE0, b"x" * (MAX_HEADER - 28 - 3))]
    assert len(encode_v2(command="PROXY", src=src, dst=dst, tlvs=fits, max_size=MAX_HEADER)) == MAX_HEADER
    too_big = [custom_tlv(0xE0, b"x" * (MAX_HEADER - 28 - 3 + 1))]
    with pytest.raises(ValueError, match="exceeds"):
        encode_v2(command="PROXY", src=src, dst=dst, tlvs=too_big, max_size=MAX_HEADER)
    assert len(encode_v2(command="PROXY", src=src, dst=dst, tlvs=too_big)) == MAX_HEADER + 1
    with pytest.raises(ValueError, match="exceeds"):
        encode_v2(command="PROXY", src=src, dst=dst, tlvs=fits, crc32c=True, max_size=MAX_HEADER)


# --- CRC32C TLV ---------------------------------------------------------------------------------


def test_crc32c_tlv_layout() -> None:
    header = encode_v2(command="PROXY", src=("192.0.2.1", 56324), dst=("198.51.100.7", 143),
                       tlvs=[authority_tlv("imap.example")], crc32c=True)
    # Checksum TLV first, right after the addresses, then the caller's TLVs.
    assert header[14:16] == b"\x00\x22"                        # 12 + 7 + 15
    assert header[16:28] == TCP4_HEADER[16:]
    assert header[28:31] == b"\x03\x00\x04"
    assert header[35:] == b"\x02\x00\x0cimap.example"
    zeroed = header[:31] + b"\x00\x00\x00\x00" + header[35:]
    assert header[31:35] == crc32c(zeroed).to_bytes(4, "big")
    result = parse(header, require_crc32c=True)
    assert result.tlvs == [(PP2_TYPE_CRC32C, header[31:35]), (PP2_TYPE_AUTHORITY, b"imap.example")]


def test_matches_haproxy_bytes() -> None:
    header = encode_v2(command="PROXY", src=("192.0.2.1", 56324), dst=("198.51.100.7", 143),
                       tlvs=[authority_tlv("imap.example"), unique_id_tlv(b"abc123")], crc32c=True)
    assert header == HAPROXY_PROXY
    assert encode_v2(command="LOCAL", src=None, dst=None, tlvs=[], crc32c=True) == HAPROXY_LOCAL


def test_parses_haproxy_bytes() -> None:
    result = parse(HAPROXY_PROXY + IMAP_CMD, require_crc32c=True)
    assert result.src == ("192.0.2.1", 56324)
    assert result.dst == ("198.51.100.7", 143)
    assert result.tlv(PP2_TYPE_UNIQUE_ID) == b"abc123"
    assert result.rest == IMAP_CMD
    local = parse(HAPROXY_LOCAL, require_crc32c=True)
    assert (local.command, local.src, local.consumed) == ("LOCAL", None, 23)


@pytest.mark.parametrize("header", [
    HAPROXY_PROXY,
    HAPROXY_LOCAL,
    encode_v2(command="PROXY", src=("2001:db8::1", 40000), dst=("2001:db8::2", 993),
              tlvs=[ssl_tlv(client_flags=7, verify=0, cn="dr.example"), (PP2_TYPE_NOOP, b"")], crc32c=True),
], ids=["tcp4", "local", "tcp6"])
def test_any_flipped_byte_is_refused(header: bytes) -> None:
    # Trailing zeros complete any header whose length field grew, so every case reaches a verdict.
    padding = bytes(0x10000)
    for i in range(len(header)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(header)
            damaged[i] ^= mask
            with pytest.raises(ProxyHeaderError):
                ProxyHeaderParser(require_crc32c=True).feed(bytes(damaged) + padding)


def test_bad_crc_reason() -> None:
    damaged = bytearray(HAPROXY_PROXY)
    damaged[-1] ^= 0x01                     # last byte of the unique ID
    assert reason(bytes(damaged)) == "bad_crc"
    damaged = bytearray(HAPROXY_PROXY)
    damaged[31] ^= 0x01                     # the checksum itself
    assert reason(bytes(damaged)) == "bad_crc"


def test_require_crc32c() -> None:
    assert reason(TCP4_HEADER, require_crc32c=True) == "missing_crc"
    assert reason(b"PROXY", require_crc32c=True) == "missing_crc"


def test_crc_tlv_must_be_single_and_four_bytes() -> None:
    two = SIG + b"\x21\x00\x00\x0e" + b"\x03\x00\x04\x00\x00\x00\x00" * 2
    assert reason(two) == "bad_tlv"
    short = SIG + b"\x21\x00\x00\x06" + b"\x03\x00\x03\x00\x00\x00"
    assert reason(short) == "bad_tlv"


# --- v1 -----------------------------------------------------------------------------------------

V1_TCP6_MAX = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
               b" 65535 65535\r\n")
V1_UNKNOWN_MAX = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                  b" 65535 65535\r\n")


def test_v1_spec_examples() -> None:
    line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line) == 56
    assert parse(line) == ProxyResult(1, "PROXY", ("255.255.255.255", 65535), ("255.255.255.255", 65535), [], 56, b"")
    assert len(V1_TCP6_MAX) == 104
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert parse(V1_TCP6_MAX) == ProxyResult(1, "PROXY", (six, 65535), (six, 65535), [], 104, b"")
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyResult(1, "PROXY", None, None, [], 15, b"")
    assert len(V1_UNKNOWN_MAX) == 107
    assert parse(V1_UNKNOWN_MAX) == ProxyResult(1, "PROXY", None, None, [], 107, b"")


def test_v1_spec_http_example_keeps_request() -> None:
    request = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    result = parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + request)
    assert result.src == ("192.168.0.1", 56324)
    assert result.dst == ("192.168.0.11", 443)
    assert result.rest == request


def test_v1_ipv6_forms() -> None:
    result = parse(b"PROXY TCP6 2001:DB8::1 ::ffff:192.0.2.1 0 1\r\n")
    assert result.src == ("2001:db8::1", 0)
    assert result.dst == (str(ipaddress.IPv6Address("::ffff:192.0.2.1")), 1)


@pytest.mark.parametrize(("line", "expected"), [
    (b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "no_proxy_header"),
    (b"PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1  2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n", "v1_malformed"),
    (b"PROXY\tTCP4 192.0.2.1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY UNKNOWNX\r\n", "v1_malformed"),
    (b"PROXY \r\n", "v1_malformed"),
    (b"PROXY\r\n", "v1_malformed"),
    (b"PROXY TCP4 256.0.2.1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::2 1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 65536\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 99999\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n", "v1_malformed"),
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", "v1_malformed"),          # bare LF
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX", "v1_malformed"),         # bare CR
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\r\n", "v1_malformed"),
    (b"PROXY UNKNOWN a\rb\r\n", "v1_malformed"),                       # bare CR, even in UNKNOWN
    (b"PROXY UNKNOWN a\nb\r\n", "v1_malformed"),
    (V1_UNKNOWN_MAX[:-2] + b"f\r\n", "v1_too_long"),                    # 108 bytes
    (b"PROXY UNKNOWN " + b"x" * 93, "v1_too_long"),                     # 107 bytes, no CRLF
])
def test_v1_malformed(line: bytes, expected: str) -> None:
    assert reason(line) == expected
    assert reason(line + IMAP_CMD) == expected


def test_v1_length_limit_is_exact() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"x" * 92) is None       # 106 bytes: CRLF may still come
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(b"x")
    assert info.value.reason == "v1_too_long"
    assert parse(b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n").consumed == 107
    assert reason(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", max_v1=30) == "v1_too_long"


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    assert parse(b"PROXY UNKNOWN whatever \xff goes\r\nx").rest == b"x"


def test_v1_garbage_refused_before_crlf() -> None:
    assert ProxyHeaderParser().feed(b"PROXY TCP4 192.0.2.1 ") is None
    assert reason(b"PROXY TCP4 192.0.2.1 z") == "v1_malformed"
    assert reason(b"PROXY HTTP") == "v1_malformed"


# --- v2 malformed -------------------------------------------------------------------------------


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + body


ADDR4 = TCP4_HEADER[16:]


@pytest.mark.parametrize(("header", "expected"), [
    (v2(0x11, 0x11, ADDR4), "bad_version"),
    (v2(0x31, 0x11, ADDR4), "bad_version"),
    (v2(0x01, 0x11, ADDR4), "bad_version"),
    (v2(0x22, 0x11, ADDR4), "bad_command"),
    (v2(0x2F, 0x11, ADDR4), "bad_command"),
    (v2(0x21, 0x12, ADDR4), "unsupported_family"),          # UDP over IPv4
    (v2(0x21, 0x22, bytes(36)), "unsupported_family"),      # UDP over IPv6
    (v2(0x21, 0x31, bytes(216)), "unsupported_family"),     # UNIX stream
    (v2(0x21, 0x32, bytes(216)), "unsupported_family"),     # UNIX datagram
    (v2(0x21, 0x10, ADDR4), "unsupported_family"),
    (v2(0x21, 0x41, ADDR4), "bad_family"),
    (v2(0x21, 0x13, ADDR4), "bad_family"),
    (v2(0x20, 0x41, b""), "bad_family"),
    (v2(0x21, 0x11, ADDR4[:8]), "bad_length"),              # shorter than the IPv4 block
    (v2(0x21, 0x21, bytes(12)), "bad_length"),
    (v2(0x20, 0x21, bytes(12)), "bad_length"),
    (v2(0x21, 0x11, ADDR4 + b"\xe0\x00\x05abc"), "bad_tlv"),   # TLV overruns the block
    (v2(0x21, 0x11, ADDR4 + b"\xe0\x00"), "bad_tlv"),          # truncated TLV header
    (v2(0x20, 0x00, b"\x04"), "bad_tlv"),
])
def test_v2_malformed(header: bytes, expected: str) -> None:
    assert reason(header) == expected
    assert reason(header + IMAP_CMD) == expected


def test_v2_tlv_overrunning_into_next_layer_is_refused() -> None:
    # The TLV claims bytes that are present, but beyond the announced length: still an error.
    assert reason(v2(0x21, 0x11, ADDR4 + b"\xe0\x00\x05abc") + b"de") == "bad_tlv"


def test_v2_local_accepts_any_listed_family() -> None:
    for fam, size in ((0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216), (0x11, 12)):
        result = parse(v2(0x20, fam, bytes(size) + b"\xe0\x00\x01z"))
        assert (result.command, result.src, result.dst) == ("LOCAL", None, None)
        assert result.tlvs == [(0xE0, b"z")]


def test_v2_length_beyond_max() -> None:
    header = v2(0x21, 0x11, ADDR4 + b"\xe0\x00\xb9" + bytes(185))    # 216 bytes in all
    assert parse(header, max_v2=216).consumed == 216
    parser = ProxyHeaderParser(max_v2=215)
    assert parser.feed(header[:15]) is None
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(header[15:16])              # refused on the length field, not after the body
    assert info.value.reason == "too_long"
    assert reason(SIG + b"\x21\x11\xff\xff", max_v2=1500) == "too_long"


def test_v2_full_length_accepted() -> None:
    header = encode_v2(command="PROXY", src=None, dst=None, tlvs=[custom_tlv(0xE0, bytes(0xFFFF - 3))])
    assert len(header) == 16 + 0xFFFF
    assert parse(header).consumed == len(header)


# --- early decision, rest, incremental feeding ---------------------------------------------------


@pytest.mark.parametrize("data", [b"\x16\x03\x01", b"a1 LOGIN", b"GET / HTTP/1.1\r\n", b"\x00", b"\n", b" PROXY"])
def test_no_proxy_header_on_first_byte(data: bytes) -> None:
    assert reason(data[:1]) == "no_proxy_header"
    assert reason(data) == "no_proxy_header"


def test_no_proxy_header_as_soon_as_a_prefix_diverges() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"\r\n\r\n") is None
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(b"X")
    assert info.value.reason == "no_proxy_header"
    assert reason(b"\r\n\r\n\x00\r\nQUIT\r") == "no_proxy_header"
    assert reason(b"PROXX") == "no_proxy_header"
    assert reason(b"PRO\x00") == "no_proxy_header"


@pytest.mark.parametrize("header", [
    TCP4_HEADER,
    HAPROXY_PROXY,
    HAPROXY_LOCAL,
    b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 143\r\n",
    b"PROXY UNKNOWN\r\n",
    V1_TCP6_MAX,
], ids=["v2-tcp4", "v2-haproxy", "v2-local", "v1-tcp4", "v1-unknown", "v1-tcp6"])
def test_rest_preserved(header: bytes) -> None:
    whole = parse(header + IMAP_CMD)
    assert whole.consumed == len(header)
    assert whole.rest == IMAP_CMD
    bytewise, unfed = parse_bytewise(header + IMAP_CMD)
    assert bytewise.rest == b""
    assert unfed == IMAP_CMD                    # not one byte taken beyond the header
    assert bytewise == ProxyResult(whole.version, whole.command, whole.src, whole.dst, whole.tlvs,
                                   whole.consumed, b"")


def test_rest_preserved_across_feeds() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(TCP4_HEADER[:20]) is None
    assert parser.feed(b"") is None
    result = parser.feed(TCP4_HEADER[20:] + IMAP_CMD)
    assert result is not None
    assert (result.consumed, result.rest) == (28, IMAP_CMD)


def test_feed_after_result_or_error() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(TCP4_HEADER) is not None
    with pytest.raises(RuntimeError):
        parser.feed(IMAP_CMD)
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"\x16")
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(TCP4_HEADER)
    assert info.value.reason == "no_proxy_header"


def test_parser_limits_validated() -> None:
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v1=14)
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v2=15)


def test_error_str() -> None:
    err = ProxyHeaderError("bad_crc", "checksum mismatch")
    assert (err.reason, err.detail, str(err)) == ("bad_crc", "checksum mismatch", "bad_crc: checksum mismatch")
    assert str(ProxyHeaderError("no_proxy_header")) == "no_proxy_header"


# --- properties ---------------------------------------------------------------------------------

ips = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.ip_addresses(v=4).map(lambda ip: ipaddress.IPv6Address((0xFFFF << 32) | int(ip))),   # v4-mapped
)
ports = st.integers(0, 0xFFFF)
tlv_lists = st.lists(
    st.tuples(st.integers(0, 0xFF).filter(lambda t: t != PP2_TYPE_CRC32C), st.binary(max_size=300)),
    max_size=6,
)


def expected_pair(src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                  dst: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, str]:
    """What the receiver should see: IPv4 when both ends are IPv4 (mapped or not), else IPv6."""
    def v4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
        return ip if isinstance(ip, ipaddress.IPv4Address) else ip.ipv4_mapped

    s4, d4 = v4(src), v4(dst)
    if s4 is not None and d4 is not None:
        return str(s4), str(d4)

    def v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if isinstance(ip, ipaddress.IPv4Address):
            ip = ipaddress.IPv6Address((0xFFFF << 32) | int(ip))
        return str(ip)

    return v6(src), v6(dst)


@settings(max_examples=300, deadline=None)
@given(command=st.sampled_from(["PROXY", "LOCAL", "UNSPEC"]), src=ips, dst=ips, sport=ports, dport=ports,
       tlvs=tlv_lists, with_crc=st.booleans(), tail=st.binary(max_size=20))
def test_roundtrip(command: str, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   dst: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int, dport: int,
                   tlvs: list[tuple[int, bytes]], with_crc: bool, tail: bytes) -> None:
    if command == "PROXY":
        header = encode_v2(command="PROXY", src=(str(src), sport), dst=(str(dst), dport), tlvs=tlvs,
                           crc32c=with_crc)
    else:
        header = encode_v2(command="LOCAL" if command == "LOCAL" else "PROXY", src=None, dst=None, tlvs=tlvs,
                           crc32c=with_crc)
    whole = parse(header + tail, require_crc32c=with_crc)
    assert whole.version == 2
    assert whole.consumed == len(header)
    assert whole.rest == tail
    if command == "PROXY":
        s, d = expected_pair(src, dst)
        assert (whole.command, whole.src, whole.dst) == ("PROXY", (s, sport), (d, dport))
    else:
        assert (whole.command, whole.src, whole.dst) == (command if command == "LOCAL" else "PROXY", None, None)
    received = [t for t in whole.tlvs if t[0] != PP2_TYPE_CRC32C]
    assert received == [(t, bytes(v)) for t, v in tlvs]
    assert len(whole.tlvs) == len(tlvs) + with_crc
    bytewise, unfed = parse_bytewise(header + tail, require_crc32c=with_crc)
    assert unfed == tail
    assert bytewise == ProxyResult(whole.version, whole.command, whole.src, whole.dst, whole.tlvs,
                                   whole.consumed, b"")


valid_headers = st.sampled_from([TCP4_HEADER, HAPROXY_PROXY, HAPROXY_LOCAL, V1_TCP6_MAX, b"PROXY UNKNOWN\r\n",
                                 b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 143\r\n"])
mutated = st.tuples(valid_headers, st.integers(0, 200), st.integers(0, 255), st.binary(max_size=40)).map(
    lambda t: t[0][:t[1]] + bytes([t[2]]) + t[0][t[1] + 1:] + t[3])
arbitrary = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: SIG + b),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.binary(max_size=120).map(lambda b: SIG + b"\x21\x11\x00" + b),
    mutated,
)


def verdict(feeds: list[bytes]) -> tuple[str, object]:
    """Feed the chunks in order; only ``ProxyHeaderError`` may escape the parser."""
    parser = ProxyHeaderParser()
    fed = 0
    for chunk in feeds:
        try:
            result = parser.feed(chunk)
        except ProxyHeaderError as exc:
            return "error", exc.reason
        fed += len(chunk)
        if result is not None:
            return "result", (result.version, result.command, result.src, result.dst, result.tlvs,
                              result.consumed, fed - len(result.rest))
    return "incomplete", None


@settings(max_examples=500, deadline=None)
@given(data=arbitrary)
def test_arbitrary_bytes(data: bytes) -> None:
    whole = verdict([data])
    bytewise = verdict([data[i:i + 1] for i in range(len(data))])
    assert whole == bytewise


# --- looks_like_header: refusing headers from peers that are not trusted balancers --------------

@pytest.mark.parametrize(("first", "verdict"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", True),
    (b"PROXY ", True),
    (b"PROX", None),
    (b"", None),
    (b"\r\n\r\n\x00\r\nQUIT\n!", True),
    (b"\r\n\r\n", None),
    (b"\x16\x03\x01\x02\x00", False),
    (b"a1 CAPABILITY\r\n", False),
    (b"PROXYX", False),
    (b"EHLO x\r\n", False),
])
def test_looks_like_header(first: bytes, verdict: bool | None) -> None:
    from sniproxy.proto.proxy_protocol import looks_like_header

    assert looks_like_header(first) is verdict


# --- issue 11: mutation survivors of proxy_protocol.py (each test names the mutant it kills) ----


def detail(data: bytes, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ProxyHeaderError) as info:
        ProxyHeaderParser(**kwargs).feed(data)
    return info.value.reason, info.value.detail


def test_parse_ssl_tlv_of_exactly_five_bytes_is_accepted() -> None:
    # Kills `len(value) < 5` -> `<=` and `5` -> `6`: client flags + verify and no sub-TLV is valid.
    info = parse_ssl_tlv(b"\x07\x00\x00\x00\x02")
    assert (info["client_flags"], info["verify"], info["tlvs"]) == (7, 2, [])
    assert info["version"] is None and info["cn"] is None


def test_parse_ssl_tlv_unknown_subtypes_are_never_decoded_nor_deduplicated() -> None:
    # Kills delete `if name is None: continue` and delete `continue`: an unknown sub-TLV may repeat and
    # need not be UTF-8; only the known string subtypes are decoded and refused twice.
    info = parse_ssl_tlv(b"\x00\x00\x00\x00\x00" + b"\x99\x00\x01\xff" * 2 + b"\x22\x00\x02cn")
    assert info["tlvs"] == [(0x99, b"\xff"), (0x99, b"\xff"), (0x22, b"cn")]
    assert info["cn"] == "cn"


def test_v1_tcp_address_byte_refused_at_once() -> None:
    # Kills `11` -> `12` (the first address byte is checked too) and the `XX` prefix on _V1_ADDR_CHARS
    # ('X' is not an address character): refused on that byte, without waiting for the CRLF.
    assert detail(b"PROXY TCP4 X") == ("v1_malformed", "byte 0x58 in a TCP line")
    assert ProxyHeaderParser().feed(b"PROXY TCP4 1") is None


def test_parser_smallest_limits_are_accepted() -> None:
    # Kills `max_v1 < len(b'PROXY UNKNOWN\r\n')` -> `<=` (and its XX prefix), `max_v2 < V2_HEADER_LEN` -> `<=`.
    assert parse(b"PROXY UNKNOWN\r\n", max_v1=15).consumed == 15
    assert parse(SIG + b"\x20\x00\x00\x00", max_v2=16).command == "LOCAL"
    with pytest.raises(ValueError) as too_small:
        ProxyHeaderParser(max_v1=14)
    assert str(too_small.value) == "max_v1 is too small for the shortest v1 line"


def test_v2_fixed_bytes_refused_on_the_byte_that_proves_them_wrong() -> None:
    # Kills `13` -> `14` (the version/command byte is checked when it is the last byte fed) and
    # `14` -> `15` (likewise the family byte).
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(SIG + b"\x31")
    assert info.value.reason == "bad_version"
    parser = ProxyHeaderParser()
    assert parser.feed(SIG + b"\x21") is None
    with pytest.raises(ProxyHeaderError) as info:
        parser.feed(b"\x41")
    assert info.value.reason == "bad_family"


def test_error_details_name_what_was_wrong() -> None:
    # Kills the `XX` prefix on each detail text below (the detail is what the log says about the drop).
    assert detail(b"PROXY", require_crc32c=True) == ("missing_crc", "a v1 header cannot carry a checksum")
    assert detail(b"PROXY\t") == ("v1_malformed", "PROXY is not followed by one space")
    assert detail(b"PROXY UNKNOWN a\rb") == ("v1_malformed", "CR not followed by LF")
    assert detail(b"PROXY UNKNOWN a\n") == ("v1_malformed", "LF not preceded by CR")
    two = SIG + b"\x21\x00\x00\x0e" + b"\x03\x00\x04\x00\x00\x00\x00" * 2
    assert detail(two) == ("bad_tlv", "more than one CRC32C TLV")
    assert detail(TCP4_HEADER, require_crc32c=True) == ("missing_crc", "no CRC32C TLV")
    parser = ProxyHeaderParser()
    assert parser.feed(TCP4_HEADER) is not None
    with pytest.raises(RuntimeError) as done:
        parser.feed(IMAP_CMD)
    assert str(done.value) == "PROXY header already parsed: later bytes belong to the next layer"


def test_v1_address_syntax_is_checked_before_ipaddress() -> None:
    # Kills delete `if _V1_IPV6.fullmatch(token) is None: raise ...` (and its raise, and the text),
    # delete `if _V1_IPV4.fullmatch(token) is None: raise ...` (and its raise, and the text): the
    # detail says which syntax the token failed, not ipaddress's own words.
    why, text = detail(b"PROXY TCP6 1 ::1 1 2\r\n")
    assert why == "v1_malformed" and text == "bad IPv6 address b'1': not IPv6 characters"
    why, text = detail(b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n")
    assert why == "v1_malformed" and text == "bad IPv4 address b'192.0.2': not dotted decimal"


# --- issue 11: mutation survivors of proxy_wire.py ----------------------------------------------


def test_a_refused_header_ends_the_connection_as_bad_proxy_header() -> None:
    # Kills delete `REASON = Reason.BAD_PROXY_HEADER` (the outcome the connection ends with).
    assert ProxyHeaderError("bad_crc").REASON is Reason.BAD_PROXY_HEADER


def test_a_parsed_header_cannot_be_changed() -> None:
    # Kills `frozen=True` -> `frozen=False` on ProxyResult: the addresses the rest of sniproxy believes.
    result = parse(TCP4_HEADER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.src = ("203.0.113.9", 1)  # type: ignore[misc]


def test_a_tlv_of_more_than_255_bytes_is_split_by_its_16_bit_length() -> None:
    # Kills `block[pos + 1] << 8` -> `>>` in split_tlvs: the high byte of a TLV length counts.
    noop = b"\x04\x01\x2c" + b"\x00" * 300
    header = SIG + b"\x21\x11" + (12 + len(noop)).to_bytes(2, "big") + TCP4_HEADER[16:] + noop
    result = parse(header + IMAP_CMD)
    assert result.tlvs == [(PP2_TYPE_NOOP, b"\x00" * 300)]
    assert result.rest == IMAP_CMD
