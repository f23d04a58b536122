"""sniproxy.proto.http_server: the cases scripts/mutation.py found untested (issue 11), bytes in, events/bytes out."""

from __future__ import annotations

import dataclasses

import pytest

from sniproxy.proto.http_server import (
    BodyReceived,
    ClientClosed,
    ClientSide,
    RequestEnded,
    RequestRefused,
    RequestStarted,
    ResponseError,
)
from tests.unit.proto.test_http_server_framing import HOST, body_of, feed

EVENTS = [RequestStarted(b"GET", b"/", [], b"1.1", False), BodyReceived(b"x"), RequestRefused(400, "x", None),
          ClientClosed(False)]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_are_frozen_and_slotted(event: object) -> None:
    field = dataclasses.fields(event)[0].name   # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, None)
    assert not hasattr(event, "__dict__")


def test_request_ended_is_frozen_and_slotted() -> None:
    assert RequestEnded.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert not hasattr(RequestEnded(), "__dict__") and not hasattr(ClientSide(), "__dict__")


def refused(raw: bytes, **limits: int) -> RequestRefused:
    events = ClientSide(**limits).receive_data(raw)
    assert len(events) == 1 and isinstance(events[0], RequestRefused), events
    return events[0]


@pytest.mark.parametrize(("raw", "detail", "soap"), [
    (b"GET / HTTP/1.1\nHost: h\r\n\r\n", "bare LF in the request head", None),
    (b"GET / HTTP/1.1\r\nContent-Type: text/xml\nX", "bare LF in the request head", "1.1"),
    (b"GET / HTTP/1.1\r\nSOAPAction: x\r\nX: a\x01\r\n\r\n", "control character in the request head", "1.1"),
    (b"GET / HTTP/1.1\r\nContent-Type: application/soap+xml\r\nX: a\x01\r\n\r\n",
     "control character in the request head", "1.2"),
    (b"GET / HTTP/1.1\r\nX-SOAPAction: x\r\nX: a\x01\r\n\r\n", "control character in the request head", None),
    (b"GET  / HTTP/1.1\r\nContent-Type: text/xml\r\n" + HOST + b"\r\n", "malformed request line", "1.1"),
    (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\nContent-Type: text/xml\r\n\r\n",
     "CONNECT is not served by a reverse proxy", "1.1"),
    (b"GET / HTTP/1.1\r\nContent-Type: text/xml\r\n\r\n", "missing mandatory Host header (RFC 9112 §3.2)", "1.1"),
    (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Type: text/xml\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     "bad request head: ", "1.1"),
])
def test_refusal_details_and_soap_guess(raw: bytes, detail: str, soap: str | None) -> None:
    got = refused(raw)
    assert got.status == 400 and got.detail.startswith(detail) and got.soap == soap


def test_bad_chunk_detail() -> None:
    got = ClientSide().receive_data(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
                                    b"Content-Type: text/xml\r\n\r\nzz\r\n")[-1]
    assert got == RequestRefused(400, "bad body framing: bad chunk line b'zz'", None)


def test_default_limits() -> None:
    line = b"GET /" + b"a" * (8192 - 14) + b" HTTP/1.1"     # 8192 bytes: at the limit
    assert len(line) == 8192
    side = ClientSide()
    assert side.receive_data(line) == []
    assert isinstance(side.receive_data(b"\r\n" + HOST + b"\r\n")[0], RequestStarted)
    assert refused(b"GET /" + b"a" * 8188).detail == "request head too large"     # 8193 bytes, no line end yet
    head = b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * (32768 - 16 - len(HOST) - 7) + b"\r\n\r\n"
    assert len(head) == 32768
    assert isinstance(ClientSide().receive_data(head)[0], RequestStarted)
    assert refused(head[:-4] + b"a\r\n\r\n").detail == "request head too large"
    assert refused(head[:-4] + b"aaaaa").detail == "request head too large"    # incomplete, over the limit


def test_request_line_limit_is_inclusive() -> None:
    assert ClientSide(max_request_line=20).receive_data(b"GET /" + b"a" * 15) == []
    assert refused(b"GET /" + b"a" * 16, max_request_line=20).detail == "request head too large"
    # Once a line end was seen, only the head limit applies to the partial head.
    side = ClientSide(max_request_line=14, max_header_bytes=64)
    assert side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 20) == []


def test_eof_before_and_in_a_head() -> None:
    assert ClientSide().receive_data(b"") == [ClientClosed(mid_request=False)]
    assert ClientSide().receive_data(b"GET / HT") == []
    side = ClientSide()
    side.receive_data(b"GET / HT")
    assert side.receive_data(b"") == [ClientClosed(mid_request=True)]
    assert side.receive_data(b"") == []


def test_blank_lines_before_a_request_are_skipped() -> None:
    events = ClientSide().receive_data(b"\r\n\r\nGET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert isinstance(events[0], RequestStarted) and isinstance(events[-1], RequestEnded)


def test_a_head_trickled_keeps_its_scan_mark() -> None:
    side = ClientSide()
    for b in b"GET / HTTP/1.1\r":
        assert side.receive_data(bytes([b])) == []
    assert side.receive_data(b"\n" + HOST + b"\r\n")[0] == RequestStarted(b"GET", b"/", [(b"host", b"h.example")],
                                                                          b"1.1", False)


def test_body_bytes_with_the_head_and_after() -> None:
    side = ClientSide()
    events = side.receive_data(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n\r\nab")
    assert body_of(events) == b"ab" and not isinstance(events[-1], RequestEnded)
    assert side.receive_data(b"cGET / HTTP/1.1\r\n") == [BodyReceived(b"c"), RequestEnded()]
    assert side.waiting and side.buffered == len(b"GET / HTTP/1.1\r\n")


def test_content_length_head_alone_then_body() -> None:
    side = ClientSide()
    events = side.receive_data(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 2\r\n\r\n")
    assert [type(e) for e in events] == [RequestStarted]
    assert side.receive_data(b"ab") == [BodyReceived(b"ab"), RequestEnded()]


def test_requests_counted() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert side.requests == 1


def test_response_writer_errors() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    with pytest.raises(ResponseError, match="illegal reason phrase"):
        side.response(200, [], b"O\nK")
    with pytest.raises(ResponseError, match="response Transfer-Encoding"):
        side.response(200, [(b"transfer-encoding", b"gzip, chunked")])
    with pytest.raises(ResponseError, match="no response head"):
        side.body(b"x")
    with pytest.raises(ResponseError, match="no response head"):
        side.end()
    side.response(204, [])
    assert side.body(b"") == b""
    with pytest.raises(ResponseError, match=r"^a body on a response that has none$"):
        side.body(b"x")


def test_chunked_response_pieces() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    head = side.response(200, [(b"Content-Length", b"9"), (b"Transfer-Encoding", b"chunked")], b"OK")
    assert head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert side.body(b"") == b""
    assert side.body(b"abcdefghijk") == b"b\r\nabcdefghijk\r\n"
    assert side.end() == (b"0\r\n\r\n", True)


def test_http10_response_delimited_by_close() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    head = side.response(200, [(b"Connection", b"keep-alive"), (b"X", b"1")], b"OK")
    assert head == b"HTTP/1.1 200 OK\r\nX: 1\r\nConnection: close\r\n\r\n"
    assert side.body(b"abc") == b"abc"
    assert side.end() == (b"", False)


def test_error_response_ends_the_stream() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    out = side.error(502, "down", None)
    assert out == (b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: 22\r\nconnection: close\r\n\r\n502 Bad Gateway: down\n")
    assert side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n") == []
    assert side.next_request() == []


def test_host_written_first() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    head = side.response(200, [(b"X", b"1"), (b"Host", b"h"), (b"Content-Length", b"0")], b"OK")
    assert head == b"HTTP/1.1 200 OK\r\nHost: h\r\nX: 1\r\nContent-Length: 0\r\n\r\n"
    assert side.informational(103, [(b"Link", b"a"), (b"HOST", b"h")]) == b"HTTP/1.1 103 \r\nHOST: h\r\nLink: a\r\n\r\n"


def test_bytewise_matches_whole() -> None:
    raw = b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert body_of(feed(ClientSide(), raw, True)) == body_of(feed(ClientSide(), raw, False)) == b"abc"


def test_field_values_lose_trailing_whitespace_only() -> None:
    events = ClientSide().receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"X-A: aX \t\r\nX-B: \tX\r\n\r\n")
    assert isinstance(events[0], RequestStarted)
    assert events[0].headers == [(b"host", b"h.example"), (b"x-a", b"aX"), (b"x-b", b"X")]


def test_a_fresh_side_has_no_response() -> None:
    side = ClientSide()
    with pytest.raises(ResponseError, match=r"^no response head$"):
        side.body(b"x")
    with pytest.raises(ResponseError, match=r"^no response head$"):
        side.end()


def test_nothing_is_held_after_a_refusal() -> None:
    side = ClientSide()
    events = side.receive_data(b"GET  / HTTP/1.1\r\n" + HOST + b"\r\nGET / HTTP/1.1\r\n")
    assert isinstance(events[-1], RequestRefused) and side.buffered == 0
    assert side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n") == [] and side.buffered == 0
    assert side.receive_data(b"") == [] and not side.waiting


@pytest.mark.parametrize("raw", [b"\n", b"\n\r", b"X\n", b"GET / HTTP/1.1\r\n\nX", b"GET / HTTP/1.1\r\nA: 1\r\n\nX"])
def test_a_bare_lf_is_refused_before_the_head_ends(raw: bytes) -> None:
    assert ClientSide().receive_data(raw) == [RequestRefused(400, "bare LF in the request head", None)]


def test_the_scan_mark_follows_what_was_checked() -> None:
    # A head trickled a byte at a time is scanned once: the mark is at its end, before a final CR.
    side = ClientSide()
    side.receive_data(b"GET / HT\r")
    assert side._scanned == 8
    side.receive_data(b"X")
    assert side._scanned == 10


def test_incomplete_head_limit_is_inclusive() -> None:
    head = b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"a" * (32768 - 16 - len(HOST) - 3)
    assert len(head) == 32768
    assert ClientSide().receive_data(head) == []
    assert refused(head + b"a").detail == "request head too large"


def test_the_line_limit_applies_again_to_the_next_request() -> None:
    side = ClientSide(max_request_line=20)
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    side.response(200, [(b"content-length", b"0")])
    assert side.end() == (b"", True)
    assert side.next_request() == []
    assert side.receive_data(b"GET /" + b"a" * 16) == [RequestRefused(400, "request head too large", None)]


def test_request_line_checked_from_its_first_byte() -> None:
    assert refused(b"(GET / HTTP/1.1\r\n" + HOST + b"\r\n").detail == "malformed request line"


def _pipelined_then_eof(second: bytes) -> tuple[ClientSide, list[object]]:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n" + second)
    assert side.receive_data(b"") == []          # EOF while the first request waits for its response
    side.response(200, [(b"content-length", b"0")])
    side.end()
    return side, list(side.next_request())


def test_eof_before_a_pipelined_body() -> None:
    _, events = _pipelined_then_eof(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\n")
    assert [type(e) for e in events] == [RequestStarted, ClientClosed] and events[-1] == ClientClosed(True)


def test_eof_after_a_pipelined_bad_chunk_is_a_close_not_a_refusal() -> None:
    side, events = _pipelined_then_eof(b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert [type(e) for e in events] == [RequestStarted, ClientClosed] and events[-1] == ClientClosed(True)
    assert side.receive_data(b"") == [] and side.receive_data(b"0\r\n\r\n") == []    # closed once, for good


@pytest.mark.parametrize("value", [b"x, close", b"X, Close"])
def test_response_connection_close_tokens(value: bytes) -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    side.response(200, [(b"Content-Length", b"0"), (b"Connection", value)])
    assert side.end() == (b"", False)


def test_head_response_has_no_body_and_keeps_the_connection() -> None:
    side = ClientSide()
    side.receive_data(b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert side.response(200, [(b"Content-Length", b"5")], b"OK") == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert side.body(b"") == b""
    assert side.end() == (b"", True)


def test_response_length_messages() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    side.response(200, [(b"Content-Length", b"2")])
    with pytest.raises(ResponseError, match=r"^too much data for the response's Content-Length$"):
        side.body(b"abc")
    with pytest.raises(ResponseError, match=r"^response shorter than its Content-Length$"):
        side.end()
    side.body(b"ab")
    assert side.end() == (b"", True)
    with pytest.raises(ResponseError, match=r"^no response head$"):
        side.body(b"x")


def test_error_after_a_response_head_and_with_a_pipelined_request() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\nGET /2 HTTP/1.1\r\n" + HOST + b"\r\n")
    side.response(200, [(b"Content-Length", b"2")])
    side.error(502, "down", None)
    with pytest.raises(ResponseError, match=r"^no response head$"):
        side.body(b"ab")
    assert not side.waiting
    assert side.next_request() == []
    held = side.buffered
    assert side.receive_data(b"x") == [] and side.buffered == held


def test_response_reason_defaults_to_empty() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert side.response(200, [(b"Content-Length", b"0")]) == b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"


def test_close_delimited_response_drops_an_empty_content_length() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert side.response(200, [(b"Content-Length", b""), (b"X", b"1")], b"OK") == (
        b"HTTP/1.1 200 OK\r\nX: 1\r\nConnection: close\r\n\r\n")


def test_http10_transfer_encoding_refusal_detail() -> None:
    got = refused(b"POST / HTTP/1.0\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert (got.detail, got.soap) == ("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)", "1.1")
    events = ClientSide().receive_data(b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nab")
    assert isinstance(events[0], RequestStarted) and isinstance(events[-1], RequestEnded)


def test_chunked_response_to_http10_is_close_delimited() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    assert side.response(200, [(b"Transfer-Encoding", b"chunked")], b"OK") == (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    assert side.body(b"abc") == b"abc"
    assert side.end() == (b"", False)
