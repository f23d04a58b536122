"""The HTTP back half over in-memory transports: requests forwarded with the card's identity,
responses relayed, the refusals it answers itself (400, 403, 421, 502, 504), backpressure, drains."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from sniproxy.driver.shared import Drain
from tests.unit.driver.kit import MSG, MSG_SANTE, FakeDialer, Harness, TlsClient, https_config, settle, snapshot

GET = b"GET /echo HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def serving(pki: TestPki, tmp_path: Path, *, card: str | None = "fort", client_auth: str = "required",
                  http: dict[str, Any] | None = None) -> tuple[Harness, TlsClient]:
    h = Harness(snapshot(https_config(pki, http=http, client_auth=client_auth), tmp_path), "https")
    client = TlsClient(pki, card=card, sni=MSG)
    client.handshake(h)
    return h, client


async def test_request_forwarded_with_identity_and_response_relayed(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    backend, proto = dialer.last
    head = backend.take()
    assert head.startswith(b"GET /echo HTTP/1.1\r\n") and b"\r\nforwarded: " in head.lower()
    assert b"x-ssl-client-verify: success" in head.lower()   # the nginx profile: a verified card
    proto.data_received(OK)
    answer = client.recv(h)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
    # The next request reuses the pooled backend connection.
    client.send(h, GET)
    await settle()
    assert len(dialer.conns) == 1 and backend.take().startswith(b"GET /echo")
    proto.data_received(OK)
    client.recv(h)
    client.close_notify(h)
    [ev] = events
    assert ev["mode"] == "http" and ev["requests"] == 2 and ev["statuses"] == {"200": 2}
    assert ev["backend_connections"] == 1 and ev["reason"] == "ok" and ev["detail"] == "client closed"


@pytest.mark.parametrize(("request_", "status", "reason"), [
    (b"GET / HTTP/1.1\r\nHost: " + MSG_SANTE.encode() + b"\r\n\r\n", 421, "misdirected_request"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
])
async def test_refused_requests_never_reach_the_backend(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer,
        request_: bytes, status: int, reason: str) -> None:
    h, client = await serving(pki, tmp_path)
    client.send(h, request_)
    await settle()
    assert client.recv(h).startswith(b"HTTP/1.1 %d " % status) and client.closed
    assert dialer.conns == []
    [ev] = events
    assert ev["reason"] == reason and ev["statuses"] == {str(status): 1}


async def test_card_required_without_card(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                          dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path, card=None, client_auth="optional")
    client.send(h, GET)
    await settle()
    assert client.recv(h).startswith(b"HTTP/1.1 403 ") and dialer.conns == []
    [ev] = events
    assert ev["reason"] == "card_required" and "identity" not in ev


async def test_backend_unavailable_is_502(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                          dialer: FakeDialer) -> None:
    dialer.error = ConnectionRefusedError(111, "Connection refused")
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    assert client.recv(h).startswith(b"HTTP/1.1 502 ")
    [ev] = events
    assert ev["reason"] == "backend_unavailable" and ev["detail"] == "127.0.0.1:20080: Connection refused"


async def test_no_response_head_in_time_is_504(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                               dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path, http={"response_timeout": 0.05})
    client.send(h, GET)
    await asyncio.sleep(0.2)
    assert client.recv(h).startswith(b"HTTP/1.1 504 ") and dialer.last[0].closed
    [ev] = events
    assert ev["reason"] == "backend_timeout"


async def test_backend_closed_mid_response_is_502(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                  dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    dialer.last[1].eof_received()
    assert client.recv(h).startswith(b"HTTP/1.1 502 ")
    [ev] = events
    assert ev["reason"] == "backend_protocol" and ev["detail"] == "backend closed before the response ended"


async def test_backpressure_both_ways(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                      dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path)
    client.send(h, b"POST /echo HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length: 10\r\n\r\n12345")
    await settle()
    backend, proto = dialer.last
    proto.pause_writing()        # the backend's write buffer is full: stop reading the client
    assert h.t.paused
    proto.resume_writing()
    assert not h.t.paused
    h.conn.pause_writing()       # the client's write buffer is full: stop reading the backend
    assert backend.paused
    h.conn.resume_writing()
    assert not backend.paused
    assert events == []


async def test_drain_between_requests_closes_at_once(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                     dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    h.conn.drain_begin()         # a request in flight: its response is owed
    assert events == []
    dialer.last[1].data_received(OK)
    client.recv(h)
    h.conn.drain_begin()
    assert client.recv(h) == b"" and client.closed
    [ev] = events
    assert ev["reason"] == "shutdown" and ev["detail"] == "drain" and ev["requests"] == 1


async def test_response_during_drain_ends_the_connection(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                         dialer: FakeDialer) -> None:
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    Drain.active = True
    dialer.last[1].data_received(OK)
    answer = client.recv(h)
    assert b"\r\nconnection: close\r\n" in answer.lower() and client.closed
    [ev] = events
    assert ev["reason"] == "ok" and ev["detail"] == "response ended the connection"


async def test_refused_handshake_still_logs_the_mode(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                     dialer: FakeDialer) -> None:
    h = Harness(snapshot(https_config(pki), tmp_path), "https")
    TlsClient(pki, card="unknown-ca", sni=MSG).handshake(h)
    [ev] = events
    assert ev["phase"] == "handshake" and ev["mode"] == "http" and "requests" not in ev


async def test_a_body_on_an_interim_response_is_502(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                    dialer: FakeDialer) -> None:
    # Before: the body llhttp read on the 1xx reached the client writer with no response head, whose ResponseError
    # ended the connection as an internal error (no answer, a traceback logged per such response).
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    dialer.last[1].data_received(b"HTTP/1.1 150 X\r\nContent-Length: 2\r\n\r\nbb" + OK)
    assert client.recv(h).startswith(b"HTTP/1.1 502 ") and dialer.last[0].closed
    [ev] = events
    assert ev["reason"] == "backend_protocol" and "interim" in ev["detail"]


async def test_a_control_character_in_the_reason_phrase_is_502(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    # Before: llhttp took it, ClientSide.response refused it with ResponseError: an internal error, no answer.
    h, client = await serving(pki, tmp_path)
    client.send(h, GET)
    await settle()
    dialer.last[1].data_received(b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok")
    assert client.recv(h).startswith(b"HTTP/1.1 502 ") and dialer.last[0].closed
    [ev] = events
    assert ev["reason"] == "backend_protocol" and "reason phrase" in ev["detail"]
