"""After a response ends with nothing pipelined, the client is read again even when the backend's write buffer
had stopped it: the backend is given back, its fullness no longer concerns this client (decision 0013: this
path no longer goes through an empty batch of client events)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sniproxy.demo.pki import TestPki
from tests.unit.driver.kit import MSG, FakeDialer, Harness, TlsClient, https_config, settle, snapshot

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
POST = b"POST /echo HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length: 5\r\n\r\n12345"


async def test_reading_resumes_after_a_response_while_the_backend_was_full(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h = Harness(snapshot(https_config(pki), tmp_path), "https")
    client = TlsClient(pki, card="fort", sni=MSG)
    client.handshake(h)
    client.send(h, POST)
    await settle()
    backend, proto = dialer.last
    assert backend.take().endswith(b"\r\n\r\n12345")
    proto.pause_writing()             # the backend's write buffer is full: the client is not read
    assert h.t.paused
    proto.data_received(OK)           # its response ends the exchange, nothing pipelined behind it
    assert client.recv(h).startswith(b"HTTP/1.1 200 OK\r\n")
    assert not h.t.paused             # the next request can come
    client.send(h, POST)
    await settle()
    assert backend.take().endswith(b"\r\n\r\n12345")
    assert events == []


async def test_a_pipelined_request_goes_out_when_the_response_before_it_ends(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h = Harness(snapshot(https_config(pki), tmp_path), "https")
    client = TlsClient(pki, card="fort", sni=MSG)
    client.handshake(h)
    client.send(h, POST + POST.replace(b"12345", b"67890"))   # two requests in one record
    await settle()
    backend, proto = dialer.last
    assert backend.take().endswith(b"\r\n\r\n12345")         # one at a time: the second waits
    proto.data_received(OK)
    assert client.recv(h).startswith(b"HTTP/1.1 200 OK\r\n")
    await settle()
    assert backend.take().endswith(b"\r\n\r\n67890")         # then it goes, on the same backend
    proto.data_received(OK)
    assert client.recv(h).startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(dialer.conns) == 1 and events == []
