"""Fuzzing the ClientHello parser (``ClientHelloParser``) with generated, fragmented and mutated hellos.

Properties:
- a generated ClientHello (random SNI, ALPN, supported_versions, unknown extensions, session id,
  suites), split into any number of TLS records and fed in any chunking, parses to exactly the values
  it was built from;
- any bytes (random, or a generated hello with mutations): the only exception is ``ClientHelloError``,
  and whole, byte by byte and random splits agree on the verdict (info, error, or need more), with
  the same message when it is an error;
- memory bounded: the record buffer never exceeds one record (5 + 2^14) and the handshake buffer
  never exceeds ``max_size``, whatever the input claims.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sniproxy.proto.clienthello import ClientHelloError, ClientHelloInfo, ClientHelloParser
from tests.unit.fuzzkit import FUZZ, bytewise, mutated, random_splits

MAX_SIZE = 4096

_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_HOST = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_UPPER = st.booleans()


def _vec(len_bytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(len_bytes, "big") + body


def _ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!H", ext_type) + _vec(2, body)


@st.composite
def hello(draw: st.DrawFn) -> tuple[bytes, ClientHelloInfo]:
    """(raw records, the info the parser must return)."""
    legacy = draw(st.sampled_from([0x0301, 0x0302, 0x0303]))
    sni = draw(st.none() | _HOST)
    alpn = tuple(draw(st.lists(st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF),
                                       min_size=1, max_size=12), max_size=4)))
    versions = tuple(draw(st.lists(st.sampled_from([0x0304, 0x0303, 0x0302, 0x7F1C, 0x0A0A]), max_size=5)))
    exts: list[bytes] = []
    if sni is not None:
        name = sni.upper() if draw(_UPPER) else sni
        # A name type other than host_name (0) is skipped by the parser (RFC 6066 3).
        other = b"\x07" + _vec(2, draw(st.binary(max_size=10))) if draw(st.booleans()) else b""
        exts.append(_ext(0, _vec(2, other + b"\x00" + _vec(2, name.encode()))))
    if alpn:
        exts.append(_ext(16, _vec(2, b"".join(_vec(1, a.encode("latin-1")) for a in alpn))))
    if versions:
        exts.append(_ext(43, _vec(1, b"".join(struct.pack("!H", v) for v in versions))))
    # Unknown extensions (GREASE-like types), anywhere in the list: ignored by the parser.
    for t in draw(st.lists(st.sampled_from([0x0A0A, 0x1A1A, 10, 11, 13, 51, 0xFE0D]), unique=True, max_size=4)):
        exts.insert(draw(st.integers(0, len(exts))), _ext(t, draw(st.binary(max_size=40))))
    no_ext = not exts and draw(st.booleans())
    body = (struct.pack("!H", legacy) + draw(st.binary(min_size=32, max_size=32))
            + _vec(1, draw(st.binary(max_size=32)))
            + _vec(2, b"".join(struct.pack("!H", s) for s in draw(st.lists(st.integers(0, 0xFFFF), min_size=1,
                                                                                       max_size=20))))
            + _vec(1, b"\x00") + (b"" if no_ext else _vec(2, b"".join(exts))))
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    # Fragment the handshake message over several records (RFC 8446 5.1 allows it).
    sizes = draw(st.lists(st.integers(1, 200), max_size=6))
    records, pos = bytearray(), 0
    for size in [*sizes, len(handshake)]:
        piece = handshake[pos:pos + size]
        if piece:
            records += b"\x16\x03" + bytes([draw(st.sampled_from([1, 3]))]) + _vec(2, piece)
        pos += len(piece)
    trailing = draw(st.binary(max_size=20))   # the next flight: not the parser's business
    info = ClientHelloInfo(sni.lower() if sni else None, alpn, versions, legacy)
    return bytes(records) + trailing, info


def verdict(chunks: list[bytes], max_size: int = MAX_SIZE) -> tuple[str, object]:
    """Feed in order: ("info", info) / ("error", message) / ("more", None); checks the buffer bounds."""
    parser = ClientHelloParser(max_size=max_size)
    for chunk in chunks:
        try:
            info = parser.feed(chunk)
        except ClientHelloError as exc:
            # After an error, the parser keeps refusing with the same words.
            try:
                parser.feed(b"\x16")
            except ClientHelloError as again:
                assert str(again) == str(exc)
            return "error", str(exc)
        assert len(parser._rec) <= 5 + (1 << 14)
        assert len(parser._hs) <= max_size
        assert parser._seen <= max_size
        if info is not None:
            assert parser.feed(b"anything") is info   # complete: later bytes change nothing
            return "info", info
    return "more", None


@FUZZ
@given(generated=hello(), data=st.data())
def test_generated_hello_parses_to_what_it_was_built_from(generated: tuple[bytes, ClientHelloInfo],
                                                          data: st.DataObject) -> None:
    raw, info = generated
    if len(raw) - 20 > MAX_SIZE:   # rare: too big for the configured bound, which is a refusal
        return
    assert verdict([raw]) == ("info", info)
    assert verdict(bytewise(raw)) == ("info", info)
    assert verdict(random_splits(data, raw)) == ("info", info)


@FUZZ
@given(data=st.data())
def test_any_bytes_same_verdict_however_split(data: st.DataObject) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=400), mutated(hello().map(lambda h: h[0])),
                              st.binary(max_size=200).map(lambda b: b"\x16\x03\x01" + b)))
    whole = verdict([raw])
    assert verdict(bytewise(raw)) == whole
    assert verdict(random_splits(data, raw)) == whole
    if whole[0] == "info":
        info = whole[1]
        assert isinstance(info, ClientHelloInfo)
        assert info.sni is None or (info.sni.isascii() and info.sni == info.sni.lower() and len(info.sni) <= 253)


@FUZZ
@given(claimed=st.integers(0, 0xFFFFFF), max_size=st.integers(64, 2048))
def test_claimed_lengths_never_grow_the_buffers(claimed: int, max_size: int) -> None:
    """A hello that announces a huge length is refused by ``max_size``, not buffered up to its claim."""
    handshake = b"\x01" + claimed.to_bytes(3, "big") + b"\x03\x03" + b"\x00" * 3000
    records = b"".join(b"\x16\x03\x01" + _vec(2, handshake[i:i + 1000]) for i in range(0, len(handshake), 1000))
    kind, _ = verdict(bytewise(records[:max_size + 200]), max_size=max_size)
    assert kind in ("error", "more")
