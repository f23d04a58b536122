"""Review of issue 16's HTTP change (f0f6dc3..20a2d9e): a finding's regression test (it failed before the fix).

``ClientSide.response`` given a ``Transfer-Encoding: chunked`` response for an HTTP/1.0 client removes
the field (as h11 did) but keeps framing the body as chunked, so the 1.0 client, which has no
Transfer-Encoding to decode, gets ``3\\r\\nabc\\r\\n0\\r\\n\\r\\n`` as the body. h11 (the documented
oracle, docs/decisions/0007) wrote the body close-delimited: ``abc``. Latent today: the driver strips
Transfer-Encoding (hop-by-hop) before calling ``response``.
"""

from __future__ import annotations

import h11

from sniproxy.proto.http_server import ClientSide

_REQ = b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"


def _h11() -> bytes:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(_REQ)
    conn.next_event()
    return (conn.send(h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")]))
            + conn.send(h11.Data(data=b"abc")) + conn.send(h11.EndOfMessage()))


def test_chunked_response_to_http10_client_is_close_delimited_as_h11_wrote_it() -> None:
    side = ClientSide()
    side.receive_data(_REQ)
    head = side.response(200, [(b"Transfer-Encoding", b"chunked")])
    body = side.body(b"abc")
    end, keep = side.end()
    assert not keep
    assert head + body + end == _h11() == b"HTTP/1.1 200 \r\nConnection: close\r\n\r\nabc"
