"""sniproxy.proto.http_server since issue 16 (llhttp heads, our own body framing and response writer).

``test_http_server.py`` is the contract kept from the h11 version; these add what the new code must
hold on its own: the checks llhttp does not make, bodies framed here (fed whole and byte by byte),
and responses framed exactly as h11 framed them (h11 is the oracle, as a server connection).
"""

from __future__ import annotations

import h11
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
    ResponseError,
)

HOST = b"Host: h.example\r\n"


def feed(side: ClientSide, data: bytes, bytewise: bool) -> list[Event]:
    if not bytewise:
        return side.receive_data(data)
    out: list[Event] = []
    for i in range(len(data)):
        out += side.receive_data(data[i:i + 1])
    return out


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyReceived))


REFUSED = [
    b"GET / HTTP/1.1\r\nX: b\r\n\r\n",                       # HTTP/1.1 without Host
    b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n",                 # two spaces (llhttp takes them)
    b"GET / HTTP/1.1 \r\n" + HOST + b"\r\n",
    b"GET /\r\n\r\n",                                        # HTTP/0.9
    b"GET / HTTP/2.0\r\n" + HOST + b"\r\n",
    b"GET / HTTP/1.2\r\n" + HOST + b"\r\n",
    b"GET / http/1.1\r\n" + HOST + b"\r\n",
    b"GET /a\x80 HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET /a\x01 HTTP/1.1\r\n" + HOST + b"\r\n",
    b"G@T / HTTP/1.1\r\n" + HOST + b"\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\na",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: 1\r\n y\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b"X\xe9: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + HOST + b": 1\r\n\r\n",
]


@pytest.mark.parametrize("raw", REFUSED)
@pytest.mark.parametrize("bytewise", [False, True])
def test_refused_and_nothing_after(raw: bytes, bytewise: bool) -> None:
    side = ClientSide()
    follow = b"GET /after HTTP/1.1\r\n" + HOST + b"\r\n"
    events = feed(side, raw + follow, bytewise)
    refused = [e for e in events if isinstance(e, RequestRefused)]
    assert refused and refused[0].status == 400 and events[-1] is refused[0], events
    assert not [e for e in events if isinstance(e, RequestStarted) and e.target == b"/after"]
    assert side.receive_data(follow) == []


@pytest.mark.parametrize("bytewise", [False, True])
def test_accepted_heads(bytewise: bool) -> None:
    side = ClientSide()
    raw = (b"GET /x?a=b HTTP/1.1\r\n" + HOST + b"X-Pad:   v a l \t\r\nEmpty:\r\n"
           b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    events = feed(side, raw, bytewise)
    start = events[0]
    assert isinstance(start, RequestStarted) and isinstance(events[-1], RequestEnded)
    assert start.method == b"GET" and start.target == b"/x?a=b" and start.http_version == b"1.1"
    assert start.headers == [(b"host", b"h.example"), (b"x-pad", b"v a l"), (b"empty", b""),
                             (b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    side = ClientSide()   # HTTP/1.0 needs no Host
    events = feed(side, b"OPTIONS * HTTP/1.0\r\n\r\n", bytewise)
    assert isinstance(events[0], RequestStarted) and events[0].http_version == b"1.0"


@pytest.mark.parametrize("bytewise", [False, True])
def test_pipelined_bodies_frame_the_next_head(bytewise: bool) -> None:
    side = ClientSide()
    raw = (b"POST /1 HTTP/1.1\r\n" + HOST + b"Content-Length: 24\r\n\r\n" + b"GET /not-a-head HTTP/1.1"
           + b"POST /2 HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
           + b"16\r\nGET /no HTTP/1.1\r\n\r\n\r\n\r\n0\r\n\r\n"
           + b"GET /3 HTTP/1.1\r\n" + HOST + b"\r\n")
    events = feed(side, raw, bytewise)
    assert isinstance(events[0], RequestStarted) and events[0].target == b"/1"
    assert body_of(events) == b"GET /not-a-head HTTP/1.1" and isinstance(events[-1], RequestEnded)
    seen = [events]
    for _ in range(2):
        side.response(200, [(b"content-length", b"0")])
        assert side.end() == (b"", True)
        seen.append(side.next_request())
    assert [e.target for ev in seen for e in ev if isinstance(e, RequestStarted)] == [b"/1", b"/2", b"/3"]
    assert body_of(seen[1]) == b"GET /no HTTP/1.1\r\n\r\n\r\n"
    assert isinstance(seen[2][-1], RequestEnded) and side.buffered == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_eof_in_a_body(chunked: bool) -> None:
    side = ClientSide()
    framing = b"Transfer-Encoding: chunked\r\n\r\n5\r\nab" if chunked else b"Content-Length: 5\r\n\r\nab"
    events = side.receive_data(b"POST / HTTP/1.1\r\n" + HOST + framing)
    assert body_of(events) == b"ab"
    assert side.receive_data(b"") == [ClientClosed(mid_request=True)]
    assert side.receive_data(b"cde") == []


def test_response_errors_instead_of_a_desync() -> None:
    side = ClientSide()
    side.receive_data(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
    with pytest.raises(ResponseError):
        side.response(200, [], b"O\x01K")
    side.response(200, [(b"content-length", b"2")])
    with pytest.raises(ResponseError):
        side.body(b"abc")
    side.body(b"a")
    with pytest.raises(ResponseError):
        side.end()
    side = ClientSide()
    side.receive_data(b"HEAD / HTTP/1.1\r\n" + HOST + b"\r\n")
    side.response(200, [(b"content-length", b"2")])
    with pytest.raises(ResponseError):
        side.body(b"ab")


# ------------------------------------------------------------------ responses, h11 as the oracle
def h11_exchange(request: bytes, status: int, headers: list[tuple[bytes, bytes]], body: list[bytes]
                 ) -> tuple[bytes, bytes, bytes, bool]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    while not isinstance(conn.next_event(), h11.EndOfMessage):
        pass
    head = conn.send(h11.Response(status_code=status, headers=headers, reason=b"OK")) or b""
    data = b"".join(conn.send(h11.Data(data=b)) or b"" for b in body)
    end = conn.send(h11.EndOfMessage()) or b""
    return head, data, end, conn.our_state is h11.DONE and conn.their_state is h11.DONE


def ours(request: bytes, status: int, headers: list[tuple[bytes, bytes]], body: list[bytes]
         ) -> tuple[bytes, bytes, bytes, bool]:
    side = ClientSide()
    assert isinstance(side.receive_data(request)[-1], RequestEnded)
    head = side.response(status, headers, b"OK")
    data = b"".join(side.body(b) for b in body)
    end, keep = side.end()
    return head, data, end, keep


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from([b"GET", b"HEAD", b"POST"]), version=st.sampled_from([b"1.0", b"1.1"]),
       req_conn=st.sampled_from([None, b"close", b"keep-alive", b"Keep-Alive, foo"]),
       status=st.sampled_from([200, 201, 204, 304, 404, 500]),
       length=st.booleans(), resp_conn=st.sampled_from([None, b"close", b"keep-alive"]),
       extra=st.lists(st.tuples(st.sampled_from([b"Server", b"x-a", b"Host", b"Content-Type"]),
                                st.sampled_from([b"v", b"text/xml; charset=utf-8", b""])), max_size=3),
       pieces=st.lists(st.binary(min_size=1, max_size=5), max_size=3))
def test_responses_framed_as_h11_framed_them(method: bytes, version: bytes, req_conn: bytes | None, status: int,
                                             length: bool, resp_conn: bytes | None,
                                             extra: list[tuple[bytes, bytes]], pieces: list[bytes]) -> None:
    request = b"%s / HTTP/%s\r\nHost: h\r\n" % (method, version)
    if req_conn is not None:
        request += b"Connection: " + req_conn + b"\r\n"
    request += b"\r\n"
    if method == b"HEAD" or status in (204, 304):
        pieces = []
    headers = list(extra)
    if length:
        headers.append((b"Content-Length", b"%d" % sum(map(len, pieces))))
    if resp_conn is not None:
        headers.append((b"connection", resp_conn))
    assert ours(request, status, headers, pieces) == h11_exchange(request, status, headers, pieces)


def test_informational_as_h11_wrote_it() -> None:
    request = b"POST / HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    conn.next_event()
    side = ClientSide()
    side.receive_data(request)
    assert side.informational(100, []) == conn.send(h11.InformationalResponse(status_code=100, headers=[]))
