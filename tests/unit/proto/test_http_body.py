"""sniproxy.proto.http_body: strict chunked decoding, fed whole and byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.proto.http_body import BadChunk, ChunkedBody


def decode(raw: bytes, bytewise: bool, limit: int = 1024) -> tuple[bytes, bool, bytes]:
    """(body, ended, bytes after the end)."""
    dec = ChunkedBody(limit)
    pieces: list[bytes] = []
    if bytewise:
        for i in range(len(raw)):
            got, done = dec.feed(raw[i:i + 1])
            pieces += got
            if done:
                return b"".join(pieces), True, dec.rest() + raw[i + 1:]
        return b"".join(pieces), False, b""
    got, done = dec.feed(raw)
    return b"".join(got), done, dec.rest() if done else b""


GOOD = [
    (b"0\r\n\r\n", b""),
    (b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
    (b"3;ext=1\r\nabc\r\n2;a;b=\"c d\"\r\nde\r\n0\r\n\r\n", b"abcde"),
    (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    (b"a\r\n0123456789\r\n00\r\n\r\n", b"0123456789"),
    (b"3\r\nabc\r\n0\r\nX-T: 1\r\nY:2\r\n\r\n", b"abc"),
    (b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n"),
    (b"0000000000000001\r\nz\r\n0\r\n\r\n", b"z"),
]


@pytest.mark.parametrize(("raw", "body"), GOOD)
@pytest.mark.parametrize("bytewise", [False, True])
def test_valid_bodies_and_the_bytes_after(raw: bytes, body: bytes, bytewise: bool) -> None:
    after = b"GET /next HTTP/1.1\r\n"
    got, done, rest = decode(raw + after, bytewise)
    assert done and got == body and rest == after


def test_incomplete_body_waits() -> None:
    dec = ChunkedBody()
    assert dec.feed(b"5\r\nab") == ([b"ab"], False)
    assert dec.feed(b"cde\r") == ([b"cde"], False)
    assert dec.feed(b"\n0\r\n") == ([], False)
    assert dec.feed(b"X: 1\r\n") == ([], False)
    assert dec.feed(b"\r\nrest") == ([], True)
    assert dec.rest() == b"rest"


BAD = [
    b"zz\r\n",                         # not hex
    b"\r\n",                           # no size
    b"-1\r\nabc\r\n0\r\n\r\n",
    b"+3\r\nabc\r\n0\r\n\r\n",
    b"0x3\r\nabc\r\n0\r\n\r\n",
    b"3 \r\nabc\r\n0\r\n\r\n",         # whitespace after the size
    b" 3\r\nabc\r\n0\r\n\r\n",
    b"3\t;x\r\nabc\r\n0\r\n\r\n",
    b"10000000000000000\r\n",           # 17 hex digits
    b"3\nabc\r\n0\r\n\r\n",            # bare LF in the chunk line
    b"3\rabc\r\n0\r\n\r\n",            # bare CR
    b"3;x\x00\r\nabc\r\n0\r\n\r\n",    # control character in an extension
    b"3\r\nabcd\r\n0\r\n\r\n",         # more data than the size
    b"3\r\nabc\n0\r\n\r\n",            # data not followed by CR LF
    b"3\r\nabc0\r\n\r\n",
    b"0\r\nX: 1\n\r\n",                # bare LF in the trailers
    b"0\r\nX: 1\r\n y\r\n\r\n",        # obs-fold in the trailers
    b"0\r\nX 1\r\n\r\n",               # trailer line without a colon
    b"0\r\nX : 1\r\n\r\n",
    b"0\r\nX: a\x01b\r\n\r\n",
    b"0\r\n\n",
]


@pytest.mark.parametrize("raw", BAD)
@pytest.mark.parametrize("bytewise", [False, True])
def test_malformed_bodies_refused(raw: bytes, bytewise: bool) -> None:
    with pytest.raises(BadChunk):
        decode(raw + b"GET / HTTP/1.1\r\n\r\n", bytewise)


@pytest.mark.parametrize("bytewise", [False, True])
def test_lines_are_bounded(bytewise: bool) -> None:
    with pytest.raises(BadChunk, match="over 64 bytes"):
        decode(b"3;" + b"x" * 100, bytewise, limit=64)
    with pytest.raises(BadChunk, match="over 64 bytes"):
        decode(b"0\r\n" + b"X: 1\r\n" * 20, bytewise, limit=64)


def test_bytewise_trickle_is_not_quadratic() -> None:
    dec = ChunkedBody(1 << 20)
    dec.feed(b"0\r\n")
    for _ in range(50_000):   # scanned once each: well under a second
        dec.feed(b"X")
    assert dec.buffered == 50_000


def _chunked(pieces: list[bytes], ext: bool) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";e=1" if ext else b"", p) for p in pieces if p)
    return out + b"0\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=8), st.booleans(), st.lists(st.integers(1, 30), max_size=40))
def test_any_split_decodes_the_same(pieces: list[bytes], ext: bool, cuts: list[int]) -> None:
    raw = _chunked(pieces, ext) + b"NEXT"
    dec = ChunkedBody()
    got: list[bytes] = []
    pos = 0
    done = False
    for size in [*cuts, len(raw)]:
        piece = raw[pos:pos + size]
        pos += len(piece)
        out, done = dec.feed(piece)
        got += out
        if done:
            assert dec.rest() + raw[pos:] == b"NEXT"
            break
    assert done and b"".join(got) == b"".join(pieces)
