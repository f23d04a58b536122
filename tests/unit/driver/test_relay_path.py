"""The relay's short paths (docs/decisions/0011-tls-record-path.md): a client record in the ``relay`` phase
and a backend read of a raw relay, each handled in a few calls; what they skip must not change what
the connection does (counters, idle clock, TLS failures, a bug closing this connection only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from sniproxy.demo.pki import TestPki
from sniproxy.driver import front
from sniproxy.tls.session import TlsSession
from tests.unit.driver.kit import IMAP_SNI, FakeDialer, Harness, TlsClient, mail_config, settle, snapshot


async def _relaying(pki: TestPki, tmp_path: Path, listener: str = "tls") -> tuple[Harness, TlsClient]:
    h = Harness(snapshot(mail_config(pki), tmp_path), listener)
    client = TlsClient(pki, sni=IMAP_SNI)
    client.handshake(h)
    await settle()
    return h, client


async def test_relay_counts_bytes_and_moves_the_idle_clock(pki: TestPki, tmp_path: Path,
                                                           events: list[dict[str, Any]], dialer: FakeDialer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    h, client = await _relaying(pki, tmp_path)
    backend, proto = dialer.last
    before_in, before_out = h.conn.bytes_in, h.conn.bytes_out
    monkeypatch.setattr(front, "monotonic", lambda: 1000.0)
    client.ssl.sendall(b"ping")
    record = client.outgoing()
    h.send(record)
    assert backend.take() == b"ping"
    assert h.conn.bytes_in == before_in + len(record) and h.conn.last_io == 1000.0
    proto.data_received(b"pong")
    assert client.recv(h) == b"pong" and h.conn.bytes_out > before_out


async def test_a_damaged_record_in_the_relay_ends_with_an_alert(pki: TestPki, tmp_path: Path,
                                                                events: list[dict[str, Any]],
                                                                dialer: FakeDialer) -> None:
    h, client = await _relaying(pki, tmp_path)
    backend, _ = dialer.last
    client.ssl.sendall(b"ping")
    record = bytearray(client.outgoing())
    record[-1] ^= 0x01
    h.send(bytes(record))
    assert backend.take() == b"" and h.t.closed
    with pytest.raises(SSL.Error, match="bad record mac"):
        client.recv(h)                           # the alert reached the client before the close
    [ev] = events
    assert ev["reason"] == "handshake_failed" and ev["phase"] == "relay"


async def test_a_bug_on_a_client_record_closes_this_connection(pki: TestPki, tmp_path: Path,
                                                               events: list[dict[str, Any]], dialer: FakeDialer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    other, _ = await _relaying(pki, tmp_path)
    h, client = await _relaying(pki, tmp_path)

    def broken(self: TlsSession, data: bytes = b"") -> tuple[bytes, bool]:
        raise RuntimeError("bug")
    monkeypatch.setattr(TlsSession, "read", broken)
    client.send(h, b"ping")
    assert h.t.closed and not other.t.closed
    [ev] = events
    assert ev["reason"] == "internal_error" and ev["phase"] == "relay"


async def test_a_bug_on_a_backend_read_closes_this_connection(pki: TestPki, tmp_path: Path,
                                                              events: list[dict[str, Any]], dialer: FakeDialer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    h, _ = await _relaying(pki, tmp_path)
    backend, proto = dialer.last

    def broken(self: TlsSession, data: bytes) -> bytes:
        raise RuntimeError("bug")
    monkeypatch.setattr(TlsSession, "encrypt", broken)
    proto.data_received(b"pong")                 # must not raise into the event loop
    assert h.t.closed and backend.closed
    [ev] = events
    assert ev["reason"] == "internal_error" and ev["phase"] == "relay"
