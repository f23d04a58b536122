"""Review of issue 16's HTTP change (f0f6dc3..20a2d9e): a finding's regression test (it failed before the fix).

RFC 9112 §6.1: a server that receives an HTTP/1.0 message with Transfer-Encoding MUST treat its
framing as faulty. The new reader (like h11 before it, and llhttp) decodes it as chunked and forwards
it re-chunked. Not a desync today (an HTTP/1.0 request always ends the connection), but it is a request a
strict reader refuses, and docs/https.md does not list it either way.
"""

from __future__ import annotations

from sniproxy.proto.http_server import ClientSide, RequestRefused


def test_http10_request_with_transfer_encoding_is_refused() -> None:
    events = ClientSide().receive_data(
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert [type(e) for e in events] == [RequestRefused]
