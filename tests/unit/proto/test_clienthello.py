"""ClientHello parser against real ClientHellos produced by the stdlib ``ssl`` module."""

from __future__ import annotations

import ssl
import struct
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.proto.clienthello import ClientHelloError, ClientHelloInfo, ClientHelloParser


@cache
def real_hello(sni: str | None, alpn: tuple[str, ...] = (), tls12_max: bool = False) -> bytes:
    """The first flight of a stdlib TLS client, read from its outgoing memory BIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if tls12_max:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def reframe(raw: bytes, sizes: list[int]) -> bytes:
    """Split the single handshake record of ``raw`` into several records of the given sizes."""
    assert raw[0] == 0x16
    length = struct.unpack("!H", raw[3:5])[0]
    payload, rest = raw[5:5 + length], raw[5 + length:]
    out, pos = bytearray(), 0
    for size in [*sizes, len(payload)]:
        piece = payload[pos:pos + size]
        if piece:
            out += raw[:3] + struct.pack("!H", len(piece)) + piece
        pos += len(piece)
    return bytes(out) + rest


def feed_bytewise(data: bytes) -> ClientHelloInfo | None:
    parser = ClientHelloParser()
    result = None
    for i in range(len(data)):
        result = parser.feed(data[i:i + 1])
        if result is not None:
            return result
    return result


def test_with_sni_whole() -> None:
    raw = real_hello("MSSante.Example.FR", ("imap",))
    info = ClientHelloParser().feed(raw)
    assert info is not None
    assert info.sni == "mssante.example.fr"
    assert info.alpn == ("imap",)
    assert 0x0304 in info.supported_versions
    assert info.legacy_version == 0x0303


def test_without_sni() -> None:
    info = ClientHelloParser().feed(real_hello(None))
    assert info is not None
    assert (info.sni, info.alpn, info.legacy_version) == (None, (), 0x0303)
    assert feed_bytewise(real_hello(None)) == info


def test_tls12_only_client_has_no_tls13_version() -> None:
    info = ClientHelloParser().feed(real_hello("a.b", tls12_max=True))
    assert info is not None and 0x0304 not in info.supported_versions and info.sni == "a.b"


def test_byte_by_byte_equals_whole() -> None:
    raw = real_hello("imap.mssante.test", ("imap", "smtp"))
    whole = ClientHelloParser().feed(raw)
    assert whole is not None
    assert feed_bytewise(raw) == whole
    parser = ClientHelloParser()
    assert parser.feed(raw[:-1]) is None       # one byte short: need more
    assert parser.feed(raw[-1:]) == whole


def test_split_across_records() -> None:
    raw = real_hello("split.example", ("imap",))
    whole = ClientHelloParser().feed(raw)
    for sizes in ([1], [2], [3], [4], [40], [100, 1, 50], [5] * 60):
        framed = reframe(raw, sizes)
        assert framed != raw
        assert ClientHelloParser().feed(framed) == whole
        assert feed_bytewise(framed) == whole


def test_bytes_after_hello_are_ignored_and_result_sticks() -> None:
    raw = real_hello("x.example")
    parser = ClientHelloParser()
    info = parser.feed(raw + b"\x17\x03\x03garbage")
    assert info is not None and info.sni == "x.example"
    assert parser.feed(b"more") == info


@pytest.mark.parametrize(("data", "match"), [
    (b"a1 CAPABILITY\r\n", "not a TLS handshake record"),
    (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
    (b"\x80\x2e\x01\x03\x01", "not a TLS handshake record"),          # SSLv2-compatible hello
    (b"\x15\x03\x03\x00\x02\x02\x28", "not a TLS handshake record"),  # an alert
    (b"\x16\x02\x00", "version major"),
    (b"\x16\x03\x01\x00\x00", "record length 0"),
    (b"\x16\x03\x01\x40\x01", "record length"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not ClientHello"),
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "too big"),
])
def test_garbage(data: bytes, match: str) -> None:
    parser = ClientHelloParser()
    with pytest.raises(ClientHelloError, match=match):
        parser.feed(data)
    with pytest.raises(ClientHelloError, match=match):   # sticky
        parser.feed(b"")


def test_garbage_detected_on_first_byte() -> None:
    with pytest.raises(ClientHelloError):
        ClientHelloParser().feed(b"E")


def _with_sni_bytes(raw: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the SNI in a real hello, fixing every enclosing length."""
    assert len(old) == len(new)
    return raw.replace(old, new)


@pytest.mark.parametrize("bad", [b"b\xe9d.example", b"bad_name..xx", b"-bad.example", b"bad.example.",
                                 b"sp ce.example"])
def test_invalid_sni(bad: bytes) -> None:
    good = b"x" * (len(bad) - 8) + b".example"
    raw = real_hello(good.decode())
    with pytest.raises(ClientHelloError, match="SNI"):
        ClientHelloParser().feed(_with_sni_bytes(raw, good, bad))


def test_truncated_inner_lengths() -> None:
    raw = real_hello("t.example")
    # Shorten the handshake length by one: the extensions no longer fit.
    hs_len = int.from_bytes(raw[6:9], "big")
    rec_len = int.from_bytes(raw[3:5], "big")
    bad = raw[:3] + (rec_len - 1).to_bytes(2, "big") + raw[5:6] + (hs_len - 1).to_bytes(3, "big") \
        + raw[9:5 + rec_len - 1]
    with pytest.raises(ClientHelloError, match=r"truncated|bytes after|bad"):
        ClientHelloParser().feed(bad)


def test_max_size() -> None:
    raw = real_hello("m.example")
    parser = ClientHelloParser(max_size=100)
    with pytest.raises(ClientHelloError, match=r"too big|larger"):
        parser.feed(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 40))
def test_property_mutations_never_crash(noise: bytes, where: int) -> None:
    """Mutated real hellos and random bytes: only ClientHelloError, never another exception."""
    raw = real_hello("p.example", ("imap",))
    for data in (noise, raw[:where] + noise, raw[:where] + noise[:1] + raw[where + 1:],
                 b"\x16\x03\x01" + noise):
        parser = ClientHelloParser()
        try:
            info = parser.feed(data)
        except ClientHelloError:
            continue
        if info is not None:
            assert info.sni is None or info.sni.isascii()
        assert len(parser._rec) <= 5 + 16384 and len(parser._hs) <= 16384 + 5
