"""A request's head, identity fields and body reach the backend in one transport call (issue 16): pieces given
to ``writelines`` (one writev with uvloop), not joined into one bytes object first, nor written one by one."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from tests.unit.driver.kit import MSG, FakeDialer, FakeTransport, Harness, TlsClient, https_config, settle, snapshot

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BODY = b"<soap:Envelope/>"
POST = (b"POST /echo HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length: " + str(len(BODY)).encode()
        + b"\r\n\r\n" + BODY)


Calls = list[tuple[str, list[bytes]]]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """The write calls made on every fake backend (and client) transport; what they write is still recorded."""
    made: Calls = []
    write = FakeTransport.write

    def one(self: FakeTransport, data: bytes) -> None:
        made.append(("write", [data]))
        write(self, data)

    def many(self: FakeTransport, parts: Iterable[bytes]) -> None:
        parts = list(parts)
        made.append(("writelines", parts))
        write(self, b"".join(parts))

    monkeypatch.setattr(FakeTransport, "write", one)
    monkeypatch.setattr(FakeTransport, "writelines", many)
    return made


def backend_calls(calls: Calls) -> Calls:
    """The calls that carried a request (the client's transport only gets TLS records)."""
    return [(kind, parts) for kind, parts in calls if b"".join(parts).startswith(b"POST ")]


async def test_a_request_goes_out_in_one_writelines(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                    dialer: FakeDialer, calls: Calls) -> None:
    h = Harness(snapshot(https_config(pki), tmp_path), "https")
    client = TlsClient(pki, card="fort", sni=MSG)
    client.handshake(h)
    client.send(h, POST)            # the first request: queued while the backend connects, then one call
    await settle()
    backend, proto = dialer.last
    first = backend.take()
    assert first.startswith(b"POST /echo HTTP/1.1\r\n") and first.endswith(b"\r\n\r\n" + BODY)
    proto.data_received(OK)
    assert client.recv(h).startswith(b"HTTP/1.1 200 OK\r\n")

    calls.clear()
    client.send(h, POST)            # the next one, on the pooled connection
    await settle()
    [(kind, parts)] = backend_calls(calls)
    assert kind == "writelines" and len(parts) > 2      # head, identity block, end of head, body: not joined
    assert b"".join(parts) == backend.take()
    assert parts[-1] == BODY and b"".join(parts).startswith(b"POST /echo HTTP/1.1\r\n")
    assert b"\r\nx-ssl-client-verify: success\r\n" in b"".join(parts).lower()
    proto.data_received(OK)
    assert client.recv(h).startswith(b"HTTP/1.1 200 OK\r\n")
    client.close_notify(h)
    assert len(events) == 1 and events[0]["statuses"] == {"200": 2}


async def test_a_request_queued_while_connecting_goes_out_in_one_writelines(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer, calls: Calls) -> None:
    h = Harness(snapshot(https_config(pki), tmp_path), "https")
    client = TlsClient(pki, card="fort", sni=MSG)
    client.handshake(h)
    client.send(h, POST)
    await settle()
    [(kind, parts)] = backend_calls(calls)
    assert kind == "writelines" and parts[-1] == BODY
    assert b"".join(parts) == dialer.last[0].take()
