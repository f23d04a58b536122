"""What the HTTP back half works out once per connection (issue 16, decision 0010) still holds request by request:
the Host checks skipped for a Host value already checked are made again for any other value or target form, the
identity fields follow the Host, a client's identity field never passes, and an error body is still SOAP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sniproxy.demo.pki import TestPki
from tests.unit.driver.kit import MSG, MSG_SANTE, FakeDialer, Harness, TlsClient, https_config, settle, snapshot

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def get(host: str | bytes, target: bytes = b"/echo", extra: bytes = b"") -> bytes:
    host = host.encode() if isinstance(host, str) else host
    return b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"


async def served(pki: TestPki, tmp_path: Path, dialer: FakeDialer) -> tuple[Harness, TlsClient, Any, Any]:
    """A connection whose first request (Host MSG) was forwarded and answered."""
    h = Harness(snapshot(https_config(pki), tmp_path), "https")
    client = TlsClient(pki, card="fort", sni=MSG)
    client.handshake(h)
    client.send(h, get(MSG))
    await settle()
    backend, proto = dialer.last
    assert backend.take().startswith(b"GET /echo HTTP/1.1\r\n")
    proto.data_received(OK)
    assert client.recv(h).startswith(b"HTTP/1.1 200 OK\r\n")
    return h, client, backend, proto


async def test_another_flows_host_after_a_checked_one_is_misdirected(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h, client, backend, proto = await served(pki, tmp_path, dialer)
    client.send(h, get(MSG))                      # the same Host again: served
    await settle()
    assert backend.take().startswith(b"GET /echo")
    proto.data_received(OK)
    client.recv(h)
    client.send(h, get(MSG_SANTE))                # another flow's Host on the same connection: 421
    await settle()
    assert client.recv(h).startswith(b"HTTP/1.1 421 ") and client.closed
    assert backend.take() == b""
    [ev] = events
    assert ev["reason"] == "misdirected_request" and ev["statuses"] == {"200": 2, "421": 1}


async def test_absolute_target_naming_another_host_after_a_checked_host_is_refused(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h, client, backend, _ = await served(pki, tmp_path, dialer)
    client.send(h, get(MSG, target=b"https://" + MSG_SANTE.encode() + b"/echo"))
    await settle()
    assert client.recv(h).startswith(b"HTTP/1.1 400 ") and client.closed
    assert backend.take() == b""
    [ev] = events
    assert ev["reason"] == "bad_request"


async def test_identity_fields_follow_the_host_and_client_copies_never_pass(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h, client, backend, proto = await served(pki, tmp_path, dialer)
    forged = b"X-SSL-Client-Verify: SUCCESS\r\nx_forwarded_host: evil\r\nForwarded: for=1.2.3.4\r\n"
    for host in (MSG + ":443", MSG):
        client.send(h, get(host, extra=forged))
        await settle()
        head = backend.take().lower()
        assert b"\r\nx-forwarded-host: " + host.encode() + b"\r\n" in head
        assert b"evil" not in head and b"1.2.3.4" not in head
        assert head.count(b"\r\nforwarded: ") == 1 and head.count(b"\r\nx-ssl-client-verify: ") == 1
        assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
        proto.data_received(OK)
        client.recv(h)
    client.close_notify(h)
    [ev] = events
    assert ev["stripped_headers"] == 6 and ev["statuses"] == {"200": 3}


async def test_error_body_of_a_soap_request_is_a_soap_fault(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    h, client, backend, proto = await served(pki, tmp_path, dialer)
    client.send(h, b"POST /ws HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Type: text/xml\r\n"
                b"Content-Length: 2\r\n\r\n<a")
    await settle()
    assert backend.take().startswith(b"POST /ws HTTP/1.1\r\n")
    proto.connection_lost(None)                   # the backend goes away before its response: 502
    await settle()
    answer = client.recv(h)
    assert answer.startswith(b"HTTP/1.1 502 ") and b"<faultcode>soap:Server</faultcode>" in answer
    [ev] = events
    assert ev["reason"] == "backend_protocol"
