"""ClientSide (llhttp + own framing, issue 16) against the h11 way it replaced, on random request streams.

The h11 reference below is what ``ClientSide`` did until issue 16 (f0f6dc3), reduced to the splitting: the same
raw checks, then a fresh ``h11.Connection`` per head, the body framed by h11 and the bytes after it handed on.
Property: every request the new reader accepts, the old one accepted too, identically (method, target, fields,
body) and at the same place in the stream. The new reader may refuse more (docs/decisions/0007 lists what),
never less, and it never finds another request boundary than h11 did.
"""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sniproxy.proto.http_rewrite import BadRequest, check_framing, check_head
from sniproxy.proto.http_server import BodyReceived, ClientSide, Event, RequestEnded, RequestRefused, RequestStarted

Request = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]


def h11_requests(stream: bytes) -> list[Request]:
    """The requests the h11 reader accepted from ``stream``, in order, up to the first refusal or the end."""
    out: list[Request] = []
    buf = stream
    while True:
        while buf[:2] == b"\r\n":
            buf = buf[2:]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out
        head, buf = buf[:end + 4], buf[end + 4:]
        try:
            check_head(head, 8192)
        except BadRequest:
            return out
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=32768)
        conn.receive_data(head)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out
        if not isinstance(event, h11.Request):
            return out
        fields = list(event.headers.raw_items())
        try:
            check_framing(fields)
        except BadRequest:
            return out
        if event.method == b"CONNECT":
            return out
        if buf:
            conn.receive_data(buf)
        body = b""
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError:
                return out
            if isinstance(ev, h11.Data):
                body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:   # NEED_DATA: the stream ends inside this body
                return out
        out.append((event.method, event.target, [(n.lower(), v) for n, v in fields], body))
        conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
        conn.send(h11.EndOfMessage())
        buf, _ = conn.trailing_data
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return out   # Connection: close or HTTP/1.0: nothing more is read


def new_requests(stream: bytes, cuts: list[int]) -> list[Request]:
    """The requests ``ClientSide`` accepts from ``stream`` fed in pieces of the sizes ``cuts`` (then the rest)."""
    side = ClientSide()
    out: list[Request] = []
    started: list[RequestStarted] = []
    body: list[bytes] = []

    def handle(events: list[Event]) -> bool:
        for e in events:
            if isinstance(e, RequestStarted):
                started[:] = [e]
                body.clear()
            elif isinstance(e, BodyReceived):
                body.append(e.data)
            elif isinstance(e, RequestEnded):
                req = started[0]
                # h11 lower-cased Transfer-Encoding values; the driver drops the field (hop-by-hop) either way
                fields = [(n, v.lower() if n == b"transfer-encoding" else v) for n, v in req.headers]
                out.append((req.method, req.target, fields, b"".join(body)))
                side.response(200, [(b"content-length", b"0")])
                _, keep = side.end()
                if not keep or not handle(side.next_request()):
                    return False
            elif isinstance(e, RequestRefused):
                return False
        return True

    pos = 0
    for size in [*cuts, len(stream)]:
        piece = stream[pos:pos + size]
        pos += len(piece)
        if piece and not handle(side.receive_data(piece)):
            break
    return out


_LINES = [b"POST /a HTTP/1.1\r\n", b"GET /b HTTP/1.1\r\n", b"GET /c HTTP/1.0\r\n", b"HEAD / HTTP/1.1\r\n",
          b"GET  /d HTTP/1.1\r\n", b"GET /e HTTP/2.0\r\n", b"GET /f\r\n", b"get /g HTTP/1.1\r\n",
          b"PATCH /h HTTP/1.1\r\n", b"GET http://h/i HTTP/1.1\r\n"]
_FIELDS = [b"Host: h\r\n", b"Host: h\r\n", b"host:h \r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n",
           b"Content-Length:  3 \r\n", b"Content-Length: 03\r\n", b"Content-Length: 3, 3\r\n",
           b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: Chunked\r\n", b"Transfer-Encoding: gzip\r\n",
           b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"X: a\tb\r\n", b"X: \x80\r\n",
           b"X:\r\n", b"X : y\r\n", b" folded\r\n", b"X: y\n", b"X: y\rz\r\n", b"X-\xe9: 1\r\n",
           b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\n"]
_BODIES = [b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n", b"0\r\n\r\n",
           b"3 \r\nabc\r\n0\r\n\r\n", b"3\r\nabcd\r\n0\r\n\r\n", b"1\r\n\n\r\n0\r\n\r\n", b"zz\r\n",
           b"00000000000000000003\r\nabc\r\n0\r\n\r\n", b"0\r\nT : 1\r\n\r\n", b"\r\n"]

_request = st.builds(lambda line, fields, body: line + b"".join(fields) + b"\r\n" + body,
                     st.sampled_from(_LINES), st.lists(st.sampled_from(_FIELDS), max_size=5),
                     st.sampled_from(_BODIES))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_request, st.sampled_from(_FIELDS + _BODIES)), min_size=1, max_size=6),
       st.lists(st.integers(1, 40), max_size=20))
def test_new_reader_accepts_only_what_h11_accepted_same_boundaries(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    old = h11_requests(stream)
    new = new_requests(stream, cuts)
    assert len(new) <= len(old), (stream, new, old)
    assert new == old[:len(new)], (stream, new, old)


def test_well_formed_pipelines_are_read_the_same() -> None:
    stream = (b"POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
              b"POST /2 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e\r\nabc\r\n0\r\nT: 1\r\n\r\n"
              b"\r\nGET /3 HTTP/1.1\r\nHost: h\r\nX:  v \r\n\r\n"
              b"GET /4 HTTP/1.0\r\n\r\n")
    old = h11_requests(stream)
    assert len(old) == 4
    assert new_requests(stream, []) == old == new_requests(stream, [1] * len(stream))
