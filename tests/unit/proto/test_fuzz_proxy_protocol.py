"""Fuzzing the PROXY v1/v2 header parser (``ProxyHeaderParser``) and ``looks_like_header``.

Properties:
- a generated v1 or v2 header (addresses of both families, LOCAL and UNKNOWN forms, random TLVs,
  with or without a CRC32C) followed by any bytes, fed in any chunking, gives the values it was
  built from, consumes exactly the header, and hands back every later byte untouched (``rest`` then
  the chunks not fed);
- any bytes (random, or a valid header with mutations): only ``ProxyHeaderError`` escapes, and whole,
  byte by byte and random splits give the same verdict (same result, or same stable error reason);
- the parser never buffers more than the header's bound (``max_v1`` / ``max_v2``), whatever the
  length field claims;
- ``looks_like_header`` (used on untrusted peers) agrees with the parser: bytes it calls "not a
  header" are refused by the parser as ``no_proxy_header``.
"""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st

from sniproxy.proto.proxy_encode import encode_v2
from sniproxy.proto.proxy_protocol import ProxyHeaderParser, looks_like_header
from sniproxy.proto.proxy_wire import MAX_V1_LINE, NO_PROXY_HEADER, V1_PREFIX, V2_SIGNATURE, ProxyHeaderError
from tests.unit.fuzzkit import FUZZ, bytewise, mutated, random_splits

MAX_V2 = 600
_V4 = st.ip_addresses(v=4).map(str)
_V6 = st.ip_addresses(v=6).map(str).filter(lambda a: ipaddress.IPv6Address(a).ipv4_mapped is None)
_PORT = st.integers(0, 0xFFFF)
_TLV = st.tuples(st.integers(0, 0xFF).filter(lambda t: t != 0x03), st.binary(max_size=40))

Expected = tuple[int, str, object, object, list[tuple[int, bytes]] | None, int]


@st.composite
def v1_header(draw: st.DrawFn) -> tuple[bytes, Expected]:
    form = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if form == "UNKNOWN":
        # Everything after UNKNOWN is ignored by the receiver (spec 2.1): any address-like text.
        line = b"PROXY UNKNOWN" + draw(st.sampled_from([b"", b" 1.2.3.4 5.6.7.8 1 2", b" ::1 ::1 3 4"])) + b"\r\n"
        return line, (1, "PROXY", None, None, [], len(line))
    host = _V4 if form == "TCP4" else _V6
    src, dst, sp, dp = draw(host), draw(host), draw(_PORT), draw(_PORT)
    line = f"PROXY {form} {src} {dst} {sp} {dp}\r\n".encode()
    return line, (1, "PROXY", (src, sp), (dst, dp), [], len(line))


@st.composite
def v2_header(draw: st.DrawFn) -> tuple[bytes, Expected]:
    command = draw(st.sampled_from(["PROXY", "LOCAL", "UNSPEC"]))
    tlvs = draw(st.lists(_TLV, max_size=5))
    crc = draw(st.booleans())
    if command == "UNSPEC":
        header = encode_v2(command="PROXY", src=None, dst=None, tlvs=tlvs, crc32c=crc)
        src = dst = None
    else:
        family = draw(st.sampled_from([_V4, _V6]))
        s, d, sp, dp = draw(family), draw(family), draw(_PORT), draw(_PORT)
        header = encode_v2(command="LOCAL" if command == "LOCAL" else "PROXY", src=(s, sp), dst=(d, dp), tlvs=tlvs,
                           crc32c=crc)
        src, dst = ((s, sp), (d, dp)) if command == "PROXY" else (None, None)
    # The parser lists every TLV, CRC32C included (its value is computed): compare the others only.
    return header, (2, "LOCAL" if command == "LOCAL" else "PROXY", src, dst, tlvs, len(header))


HEADERS = st.one_of(v1_header(), v2_header())


def verdict(chunks: list[bytes], *, require_crc: bool = False) -> tuple[str, object, bytes]:
    """Feed in order: ("result", fields, bytes after the header) / ("error", reason, b"") / ("more", None, b"")."""
    parser = ProxyHeaderParser(max_v2=MAX_V2, require_crc32c=require_crc)
    for i, chunk in enumerate(chunks):
        try:
            result = parser.feed(chunk)
        except ProxyHeaderError as exc:
            try:
                parser.feed(b"x")
            except ProxyHeaderError as again:   # an error sticks, with the same reason
                assert again.reason == exc.reason
            return "error", exc.reason, b""
        assert len(parser._buf) <= max(MAX_V1_LINE, MAX_V2)
        if result is not None:
            assert 0 < result.consumed <= max(MAX_V1_LINE, MAX_V2)
            tlvs = [(t, v) for t, v in result.tlvs if t != 0x03]
            fields = (result.version, result.command, result.src, result.dst, tlvs, result.consumed)
            return "result", fields, result.rest + b"".join(chunks[i + 1:])
    return "more", None, b""


def _norm(fields: object) -> object:
    """Addresses compared as IP values (the parser may print an IPv6 address in another valid form)."""
    assert isinstance(fields, tuple)
    version, command, src, dst, tlvs, consumed = fields

    def addr(a: object) -> object:
        if a is None:
            return None
        assert isinstance(a, tuple)
        return ipaddress.ip_address(a[0]), a[1]

    return version, command, addr(src), addr(dst), tlvs, consumed


@FUZZ
@given(header=HEADERS, after=st.binary(max_size=60), data=st.data())
def test_generated_headers_parse_back_exactly(header: tuple[bytes, Expected], after: bytes,
                                              data: st.DataObject) -> None:
    raw, expected = header
    payload = raw + after
    for chunks in ([payload], bytewise(payload), random_splits(data, payload)):
        kind, fields, rest = verdict(chunks)
        assert kind == "result", (kind, fields)
        assert _norm(fields) == _norm(expected)
        assert rest == after   # not a byte of the next protocol is eaten or lost


@FUZZ
@given(data=st.data(), require_crc=st.booleans())
def test_any_bytes_same_verdict_however_split(data: st.DataObject, require_crc: bool) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=300), mutated(HEADERS.map(lambda h: h[0])),
                              st.binary(max_size=200).map(lambda b: V2_SIGNATURE + b),
                              st.binary(max_size=120).map(lambda b: V1_PREFIX + b" " + b)))
    whole = verdict([raw], require_crc=require_crc)
    assert verdict(bytewise(raw), require_crc=require_crc) == whole
    assert verdict(random_splits(data, raw), require_crc=require_crc) == whole


@FUZZ
@given(length=st.integers(0, 0xFFFF), fam=st.sampled_from([0x00, 0x11, 0x21]), cmd=st.sampled_from([0x20, 0x21]))
def test_v2_length_field_is_bounded_before_reading(length: int, fam: int, cmd: int) -> None:
    """A v2 header claiming more than ``max_v2`` is refused at its length field, not buffered."""
    fixed = V2_SIGNATURE + bytes([cmd, fam]) + length.to_bytes(2, "big")
    kind, reason, _ = verdict(bytewise(fixed + b"\x00" * min(length, MAX_V2)))
    if 16 + length > MAX_V2:
        assert (kind, reason) == ("error", "too_long")
    else:
        assert kind in ("result", "error", "more")


@FUZZ
@given(first=st.one_of(st.binary(max_size=16), mutated(HEADERS.map(lambda h: h[0][:16]))))
@example(first=b"PROXYX")
@example(first=b"\r\n\r\n\x00\r\nQUIX")
def test_looks_like_header_agrees_with_the_parser(first: bytes) -> None:
    seen = looks_like_header(first)
    kind, reason, _ = verdict([first])
    if seen is False:
        # Never a header the parser would take ("PROXYX" is refused as a malformed v1 line, not "no header").
        assert kind == "error"
    elif seen is True:
        assert reason != NO_PROXY_HEADER
    else:
        # Not enough bytes to tell: the parser must not have refused it as "no header" either.
        assert kind == "more"
