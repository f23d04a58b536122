"""The one-pass forms of the request checks (issue 16, decision 0010) against the forms they replaced.

``check_head``'s single scan, ``without_hop_by_hop``'s single pass, ``forwarded_fields`` (hop-by-hop and
identity removal together) and ``check_framing``'s digit check must refuse and keep exactly what the
several-pass code did: the old code is kept here as the oracle, and hypothesis feeds both heads and field
lists built from the bytes that matter (CR, LF, HT, SP, controls, commas, framing and identity names).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.proto.http_backend import BackendExchange, RequestError, ResponseBroken, ResponseEnd, field_block
from sniproxy.proto.http_rewrite import (
    _FRAMING,
    HOP_BY_HOP,
    BadRequest,
    Headers,
    StripRules,
    check_framing,
    check_head,
    forwarded_fields,
    strip_identity,
    without_hop_by_hop,
)

_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def old_check_head(raw: bytes, max_request_line: int) -> None:
    body = raw[:-4] if raw.endswith(b"\r\n\r\n") else raw
    if b"\n" in body.replace(b"\r\n", b""):
        raise BadRequest("bare LF in the request head")
    if b"\r" in body.replace(b"\r\n", b""):
        raise BadRequest("bare CR in the request head")
    lines = body.split(b"\r\n")
    if len(lines[0]) > max_request_line:
        raise BadRequest(f"request line over {max_request_line} bytes")
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obs-fold (a header line starting with whitespace)")
    for line in lines:
        if _CTL.search(line):
            raise BadRequest("control character in the request head")


def old_without_hop_by_hop(headers: Headers, *, strict: bool = True) -> Headers:
    pairs = [(n.lower(), n, v) for n, v in headers]
    named = {v.strip().lower() for low, _, value in pairs if low == b"connection" for v in value.split(b",")}
    if not named:
        return [(n, v) for low, n, v in pairs if low not in HOP_BY_HOP]
    if not strict:
        named -= _FRAMING
    elif named & _FRAMING:
        raise BadRequest("Connection names a framing or routing field")
    return [(n, v) for low, n, v in pairs if low not in HOP_BY_HOP and low not in named]


def outcome(fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args, **kw))
    except BadRequest as exc:
        return ("refused", str(exc))


HEAD_BYTES = st.sampled_from([b"\r", b"\n", b"\r\n", b"\t", b" ", b"\x00", b"\x0b", b"\x7f", b"\x1f", b"a", b":",
                              b"Host", b"GET / HTTP/1.1", b"\r\n\r\n", b"\x80"])
NAMES = st.sampled_from([b"host", b"Host", b"content-length", b"Content-Length", b"transfer-encoding",
                         b"connection", b"Connection", b"keep-alive", b"te", b"upgrade", b"x-forwarded-for",
                         b"X_Forwarded_For", b"forwarded", b"ssl-client-cert", b"x-card", b"content-type",
                         b"soapaction", b"trailer", b"x-other"])
VALUES = st.sampled_from([b"", b"close", b"keep-alive", b"x-card, close", b" Content-Length ", b"host",
                          b"x-other", b"12", b" 12 ", b"7, 7", b"7,8", b"chunked", b"gzip, chunked", b"-1",
                          b"\xd9\xa1", b"1 2", b"TE, upgrade"])
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=8)
RULES = StripRules.build(["X-Card"], ["x-other*"])


@settings(max_examples=400, deadline=None)
@given(st.lists(HEAD_BYTES, max_size=12).map(b"".join), st.integers(0, 40))
def test_check_head_refuses_what_the_seven_scans_refused(head: bytes, max_line: int) -> None:
    assert outcome(check_head, head, max_line) == outcome(old_check_head, head, max_line)


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", b"GET /" + b"x" * 40 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_check_head_examples(head: bytes) -> None:
    assert outcome(check_head, head, 30) == outcome(old_check_head, head, 30)


@settings(max_examples=400, deadline=None)
@given(FIELDS, st.booleans())
def test_without_hop_by_hop_keeps_what_the_three_passes_kept(fields: Headers, strict: bool) -> None:
    assert outcome(without_hop_by_hop, fields, strict=strict) == outcome(old_without_hop_by_hop, fields, strict=strict)


@settings(max_examples=400, deadline=None)
@given(FIELDS)
def test_forwarded_fields_is_hop_by_hop_then_identity_removal(fields: Headers) -> None:
    low = [(n.lower(), v) for n, v in fields]   # (the request reader lower-cases names)
    expected = outcome(lambda: strip_identity(old_without_hop_by_hop(low), RULES))
    assert outcome(forwarded_fields, low, RULES) == expected


@settings(max_examples=300, deadline=None)
@given(FIELDS)
def test_check_framing_reads_lengths_as_before(fields: Headers) -> None:
    lengths = {v.strip() for n, value in fields if n.lower() == b"content-length" for v in value.split(b",")}
    result = outcome(check_framing, fields)
    if len(lengths) == 1 and result[0] == "ok":
        text = next(iter(lengths))
        assert text and all(c in b"0123456789" for c in text) and result[1].length == int(text)
    if (len(lengths) == 1 and not all(c in b"0123456789" for c in next(iter(lengths)))) or lengths == {b""}:
        assert result[0] == "refused"


def test_field_block_is_the_fields_as_request_writes_them() -> None:
    fields = [(b"Forwarded", b"for=1"), (b"X-SSL-Client-Verify", b"SUCCESS")]
    block = field_block(fields)
    assert block == b"Forwarded: for=1\r\nX-SSL-Client-Verify: SUCCESS\r\n"
    host = [(b"host", b"h"), (b"content-length", b"0")]
    assert (BackendExchange().request(b"POST", b"/", host, chunked=False, block=block)
            == BackendExchange().request(b"POST", b"/", host + fields, chunked=False))
    assert field_block([]) == b""


@pytest.mark.parametrize("name", [b"Host", b"content-length", b"Transfer-Encoding"])
def test_field_block_never_carries_routing_or_framing(name: bytes) -> None:
    # request() counts Host and Content-Length in its own fields only: one hidden in the block would
    # reach the backend unchecked (a second Host, a second length).
    with pytest.raises(RequestError):
        field_block([(b"x-a", b"1"), (name, b"2")])


def backend_events(raw: bytes) -> list[object]:
    ex = BackendExchange()
    ex.request(b"GET", b"/", [(b"host", b"h")], chunked=False)
    ex.end()
    return [*ex.receive_data(raw), *ex.receive_data(b"")]


@pytest.mark.parametrize(("raw", "ends"), [
    # The framing fields are looked for at the end of the stream only: those of the final head, in any case.
    (b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\r\n\r\nab", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-encoding: chunked\r\n\r\n2\r\nab\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX-Content-Length: 5\r\n\r\nab", True),
    # a 1xx's fields are not the final response's
    (b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nab", True),
    (b"HTTP/1.1 103 Early Hints\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", False),
])
def test_end_of_stream_ends_only_an_unframed_final_response(raw: bytes, ends: bool) -> None:
    last = backend_events(raw)[-1]
    assert last == (ResponseEnd(reusable=False) if ends else ResponseBroken("backend closed before the response ended"))


# The callbacks httptools' parsers look up when they are made (httptools/parser/parser.pyx, ``getattr(protocol,
# name, None)``): each one the protocol object lacks costs an AttributeError raised and dropped, per parser.
_PARSER_CALLBACKS = ("on_header", "on_headers_complete", "on_body", "on_message_begin", "on_message_complete",
                     "on_chunk_header", "on_chunk_complete")


@pytest.mark.parametrize("name", [*_PARSER_CALLBACKS, "on_status"])
def test_the_response_parser_finds_every_callback_it_looks_up(name: str) -> None:
    assert hasattr(BackendExchange, name)


@pytest.mark.parametrize("name", [*_PARSER_CALLBACKS, "on_url"])
def test_the_request_parser_finds_every_callback_it_looks_up(name: str) -> None:
    from sniproxy.proto.http_server import _Head
    assert hasattr(_Head, name)


def test_unused_callbacks_install_nothing() -> None:
    # None: httptools installs no callback for them, as when they were missing (a chunked body still parses).
    assert BackendExchange.on_chunk_header is None and BackendExchange.on_chunk_complete is None
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    events = backend_events(raw)
    assert [e for e in events if isinstance(e, ResponseEnd)] == [ResponseEnd(reusable=True)]


@pytest.mark.parametrize("ctl", [*range(0x00, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F])
def test_every_control_character_is_refused_whatever_the_fast_path(ctl: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: a" + bytes([ctl]) + b"b\r\n\r\n"
    with pytest.raises(BadRequest, match="control character"):
        check_head(head, 100)


@pytest.mark.parametrize(("head", "error"), [
    # one pair of counts equal by chance must not let a bare CR or LF through (each CR and LF is counted)
    (b"GET /XX\r\nA: b\rc\r\n\r\n", "bare CR"),
    (b"GET /XX\nA: b\r\nC: d\r\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nA: b\n\rC: d\r\n\r\n", "bare LF"),
])
def test_crafted_counts_still_refused(head: bytes, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        check_head(head, 100)


@pytest.mark.parametrize("fields", [
    [(b"host", b"h"), (b"x-forwarded-for", b"1.2.3.4"), (b"ssl_client_cert", b"x"), (b"x-card", b"1")],
    [(b"x-mss-idnat", b"1"), (b"forwarded", b"for=x"), (b"x-other-thing", b"2"), (b"content-type", b"t")],
])
def test_forwarded_fields_strips_names_never_seen_before(fields: Headers) -> None:
    # A fresh rule set (its memo empty): every identity name is judged, not only those already memoized.
    rules = StripRules.build(["X-Card"], ["x-other*"])
    kept, removed = forwarded_fields(fields, rules)
    assert kept == [f for f in fields if f[0] in (b"host", b"content-type")]
    assert removed == len(fields) - len(kept)


def test_client_eof_while_a_response_is_owed_is_reported_after_it() -> None:
    from sniproxy.proto.http_server import ClientClosed, ClientSide, RequestEnded, RequestStarted
    side = ClientSide()
    events = side.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(events[0], RequestStarted) and isinstance(events[-1], RequestEnded)
    assert side.receive_data(b"") == []           # EOF while the response is owed: nothing yet
    side.response(200, [(b"content-length", b"0")], b"OK")
    assert side.end() == (b"", True)
    assert side.next_request() == [ClientClosed(mid_request=False)]
