"""sniproxy.proto.http_server: requests split, checked and framed without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.proto.http_server import (
    BodyReceived,
    ClientClosed,
    ClientSide,
    Event,
    RequestEnded,
    RequestRefused,
    RequestStarted,
)

HOST = b"Host: h.example\r\n"


def feed_bytewise(side: ClientSide, data: bytes) -> list[Event]:
    out: list[Event] = []
    for i in range(len(data)):
        out += side.receive_data(data[i:i + 1])
    return out


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyReceived))


@pytest.mark.parametrize("bytewise", [False, True])
def test_content_length_and_chunked_bodies(bytewise: bool) -> None:
    side = ClientSide()
    raw = b"POST /a HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nhello"
    events = feed_bytewise(side, raw) if bytewise else side.receive_data(raw)
    assert isinstance(events[0], RequestStarted) and events[0].target == b"/a" and not events[0].chunked
    assert body_of(events) == b"hello" and isinstance(events[-1], RequestEnded)
    side.response(200, [(b"content-length", b"0")])
    _, keep = side.end()
    assert keep
    raw = (b"POST /b HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
           b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
    events = feed_bytewise(side, raw) if bytewise else side.receive_data(raw)
    assert isinstance(events[0], RequestStarted) and events[0].chunked
    assert body_of(events) == b"abcde" and isinstance(events[-1], RequestEnded)


def test_pipelined_requests_wait_for_the_previous_response() -> None:
    side = ClientSide()
    raw = b"".join(b"GET /%d HTTP/1.1\r\n" % i + HOST + b"\r\n" for i in range(3))
    events = side.receive_data(raw)
    assert [e.target for e in events if isinstance(e, RequestStarted)] == [b"/0"]
    assert side.waiting and side.buffered > 0
    order = [b"/0"]
    for _ in range(2):
        side.response(200, [(b"content-length", b"2")])
        side.body(b"ok")
        _, keep = side.end()
        assert keep
        order += [e.target for e in side.next_request() if isinstance(e, RequestStarted)]
    assert order == [b"/0", b"/1", b"/2"]


def test_connection_close_and_http10_end_the_stream() -> None:
    for raw in (b"GET / HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"):
        side = ClientSide()
        side.receive_data(raw)
        side.response(200, [(b"content-length", b"0")])
        _, keep = side.end()
        assert not keep


def test_response_framing_by_h11() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    head = side.response(200, [(b"content-type", b"text/plain")])
    assert b"transfer-encoding: chunked" in head.lower()
    assert side.body(b"abc") == b"3\r\nabc\r\n"
    out, keep = side.end()
    assert out == b"0\r\n\r\n" and keep


def test_expect_continue_relayed() -> None:
    side = ClientSide()
    events = side.receive_data(b"POST / HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert isinstance(events[0], RequestStarted) and (b"expect", b"100-continue") in events[0].headers
    assert side.informational(100, []).startswith(b"HTTP/1.1 100 ")
    assert body_of(side.receive_data(b"ok")) == b"ok"


SMUGGLING = [
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: identity\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1, 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: +1\r\n\r\na",
    b"POST / HTTP/1.1\n" + b"Host: h\nContent-Length: 1\n\na",
    b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X: a\r\n\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X : b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"Host: other\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: b\r\n\r\n",
    b"GET /\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("raw", SMUGGLING)
@pytest.mark.parametrize("bytewise", [False, True])
def test_ambiguous_requests_refused(raw: bytes, bytewise: bool) -> None:
    side = ClientSide()
    follow = b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n"
    events = feed_bytewise(side, raw + follow) if bytewise else side.receive_data(raw + follow)
    refused = [e for e in events if isinstance(e, RequestRefused)]
    assert refused and refused[0].status == 400, events
    # Nothing after the refusal, and never the pipelined request behind it.
    assert events[-1] is refused[0]
    assert not [e for e in events if isinstance(e, RequestStarted) and e.target == b"/after"]
    assert side.receive_data(follow) == []
    answer = side.error(400, "bad", refused[0].soap)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in answer


def test_limits() -> None:
    side = ClientSide(max_request_line=300, max_header_bytes=2048)
    events = side.receive_data(b"GET /" + b"a" * 400 + b" HTTP/1.1\r\n" + HOST + b"\r\n")
    assert isinstance(events[0], RequestRefused)
    side = ClientSide(max_request_line=300, max_header_bytes=2048)
    events = side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"b" * 3000)
    assert isinstance(events[0], RequestRefused)   # refused before the head even ends
    side = ClientSide(max_request_line=300, max_header_bytes=2048)
    events = side.receive_data(b"GET /" + b"a" * 400)   # an endless request line: refused early
    assert isinstance(events[0], RequestRefused)


def test_soap_version_guessed_for_refusals() -> None:
    side = ClientSide()
    events = side.receive_data(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Type: application/soap+xml\r\n"
                               b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(events[0], RequestRefused) and events[0].soap == "1.2"


def test_eof_between_and_inside_requests() -> None:
    side = ClientSide()
    assert side.receive_data(b"") == [ClientClosed(mid_request=False)]
    side = ClientSide()
    side.receive_data(b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n\r\nab")
    assert side.receive_data(b"") == [ClientClosed(mid_request=True)]
    side = ClientSide()
    side.receive_data(b"GET / HT")
    assert side.receive_data(b"") == [ClientClosed(mid_request=True)]


def test_leading_empty_line_ignored() -> None:
    side = ClientSide()
    events = side.receive_data(b"\r\nGET / HTTP/1.1\r\n" + HOST + b"\r\n")
    assert isinstance(events[0], RequestStarted)


_PIECES = st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", HOST, b"Content-Length: 3\r\n",
                           b"Transfer-Encoding: chunked\r\n", b"\r\n", b"\n", b" ", b"abc", b"3\r\nabc\r\n",
                           b"0\r\n\r\n", b"X: y\r\n", b"\x00", b"Expect: 100-continue\r\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.binary(max_size=40)), max_size=30))
def test_never_crashes_and_buffers_stay_bounded(pieces: list[bytes]) -> None:
    side = ClientSide(max_request_line=512, max_header_bytes=2048)
    for piece in pieces:
        for event in side.receive_data(piece):
            if isinstance(event, RequestEnded):
                side.response(200, [(b"content-length", b"0")])
                _, keep = side.end()
                if keep:
                    side.next_request()
        # Unread bytes wait only while a response is owed; otherwise a head is refused past the limit.
        assert side.waiting or side.buffered <= 2048 + 40
