"""The byte-relay back half over in-memory transports: backend connect and greeting, plaintext held
until then, both directions with backpressure, PROXY v2 out, backend failures, drain goodbyes."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from sniproxy.driver import front
from sniproxy.driver.shared import Drain
from sniproxy.tls.session import RELEASE_DUE, SMALL, TlsSession
from tests.unit.driver.kit import IMAP_SNI, FakeDialer, Harness, TlsClient, mail_config, settle, snapshot

SMTP_SNI = "frontsmtp.mssante.fr"
IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE] backend ready\r\n"
BYE_DRAIN = b"* BYE [UNAVAILABLE] Server shutting down, please reconnect\r\n"


async def relaying(pki: TestPki, tmp_path: Path, dialer: FakeDialer, listener: str, *, sni: str = IMAP_SNI,
                   greeting: bytes | None = None, cfg: dict[str, Any] | None = None) -> tuple[Harness, TlsClient]:
    """A connection through the handshake, its backend connected (and greeted, if ``greeting``)."""
    h = Harness(snapshot(cfg or mail_config(pki), tmp_path), listener)
    client = TlsClient(pki, sni=sni)
    client.handshake(h)
    await settle()
    if greeting is not None:
        dialer.last[1].data_received(greeting)
    return h, client


async def test_raw_relay_both_ways_with_backpressure(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                     dialer: FakeDialer) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "tls")
    backend, proto = dialer.last
    client.send(h, b"to the backend")
    assert backend.take() == b"to the backend"
    proto.data_received(b"to the client")
    assert client.recv(h) == b"to the client"
    # The backend's write buffer is full: the client is no longer read; and back.
    proto.pause_writing()
    assert h.t.paused
    proto.resume_writing()
    assert not h.t.paused
    # The client's write buffer is full: the backend is no longer read; and back.
    h.conn.pause_writing()
    assert backend.paused
    h.conn.resume_writing()
    assert not backend.paused
    # The client half-closes: the backend gets EOF, the connection stays open for the answer.
    client.close_notify(h)
    assert backend.eof_written and not h.t.closed and events == []
    proto.eof_received()
    [ev] = events
    assert ev["reason"] == "ok" and ev["bytes_in"] > 0 and ev["bytes_out"] > 0


async def test_plaintext_held_until_the_backend_greets(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                       dialer: FakeDialer) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "imaps")
    backend, proto = dialer.last
    client.send(h, b"a CAPABILITY\r\n")
    assert backend.take() == b"" and h.conn.take_pending() == b"a CAPABILITY\r\n"
    client.send(h, b"a CAPABILITY\r\n")
    proto.data_received(IMAP_GREETING)
    assert backend.take() == b"a CAPABILITY\r\n"
    assert client.recv(h).startswith(b"* OK ")


async def test_backend_unavailable_answered_in_the_protocol(pki: TestPki, tmp_path: Path,
                                                            events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    dialer.error = ConnectionRefusedError(111, "Connection refused")
    h, client = await relaying(pki, tmp_path, dialer, "imaps")
    assert client.recv(h) == b"* BYE [UNAVAILABLE] Service temporarily unavailable\r\n" and client.closed
    [ev] = events
    assert ev["reason"] == "backend_unavailable" and ev["phase"] == "backend_connect"
    assert ev["detail"] == "127.0.0.1:20143: Connection refused"


async def test_a_backend_that_never_greets_is_a_timeout_told_in_smtp(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    """Issue 17's soak: connected, but no greeting in time (a backend stopping): 421, then close."""
    h, client = await relaying(pki, tmp_path, dialer, "smtps", sni=SMTP_SNI,
                               cfg=mail_config(pki, timeouts={"connect": 0.05}))
    assert dialer.conns   # the TCP connection is made; the greeting never comes
    await asyncio.sleep(0.2)
    answer = client.recv(h)
    assert answer.startswith(b"421 ") and b"unavailable" in answer and client.closed
    [ev] = events
    assert ev["reason"] == "timeout" and ev["phase"] == "backend_connect"


async def test_backend_closed_before_greeting(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                              dialer: FakeDialer) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "smtps", sni=SMTP_SNI)
    dialer.last[1].eof_received()
    assert client.recv(h).startswith(b"421 ") and client.closed
    [ev] = events
    assert ev["reason"] == "backend_refused" and ev["detail"] == "closed before greeting"


async def test_proxy_v2_header_before_any_byte(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                               dialer: FakeDialer) -> None:
    cfg = mail_config(pki)
    imaps = next(ls for ls in cfg["listeners"] if ls["name"] == "imaps")
    imaps["backend"] = {"address": imaps["backend"], "identity": "proxy-v2"}
    await relaying(pki, tmp_path, dialer, "imaps", cfg=cfg)
    header = dialer.last[0].take()
    assert header.startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21")   # v2 signature, version 2 PROXY command
    assert b"MARIE" in header or b"810" in header             # the card's CN travels in PP2_SUBTYPE_SSL_CN


@pytest.mark.parametrize("draining_first", [False, True], ids=["drain-during-idle", "idle-during-drain"])
async def test_drain_goodbye_in_imap_idle(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                          dialer: FakeDialer, draining_first: bool) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "imaps", greeting=IMAP_GREETING)
    backend, _ = dialer.last
    client.recv(h)
    client.send(h, b"a NOOP\r\n")
    h.conn.drain_begin()          # not idling: a session in a command is left to end by itself
    assert events == [] and backend.take() == b"a NOOP\r\n"
    Drain.active = draining_first
    client.send(h, b"a IDLE\r\n")
    if not draining_first:
        assert backend.take() == b"a IDLE\r\n"
        Drain.active = True
        h.conn.drain_begin()
    else:
        assert backend.take() == b""   # a new IDLE while draining is answered with the goodbye
    assert client.recv(h) == BYE_DRAIN and client.closed and backend.closed
    [ev] = events
    assert ev["reason"] == "shutdown" and ev["detail"] == "drain" and ev["outcome"] == "closed"


async def test_drain_goodbye_smtp_over_tls(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                           dialer: FakeDialer) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "smtps", sni=SMTP_SNI, greeting=b"220 backend ESMTP\r\n")
    assert client.recv(h) == b"220 backend ESMTP\r\n"
    h.conn.drain_begin()          # SMTP owes its goodbye only when the drain time is over
    assert events == []
    h.conn.goodbye()
    assert client.recv(h) == b"421 4.3.2 frontsmtp.mssante.fr Service shutting down, try again later\r\n"
    [ev] = events
    assert ev["reason"] == "shutdown" and ev["phase"] == "relay"


async def test_drain_goodbye_before_tls_in_clear(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]]) -> None:
    h = Harness(snapshot(mail_config(pki), tmp_path), "imap")
    h.t.take()
    h.conn.goodbye()
    assert h.t.take() == BYE_DRAIN and h.t.closed
    [ev] = events
    assert ev["reason"] == "shutdown" and ev["phase"] == "pretls"


async def test_backend_gone_without_bye_is_told(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                dialer: FakeDialer) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "imaps", greeting=IMAP_GREETING)
    client.recv(h)
    dialer.last[1].connection_lost(ConnectionResetError(104, "reset"))
    assert client.recv(h) == b"* BYE [UNAVAILABLE] Backend closed the connection\r\n"
    [ev] = events
    assert ev["reason"] == "ok" and ev["detail"].startswith("backend reset: ")


async def test_connect_timeout(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                               dialer: FakeDialer) -> None:
    dialer.hold = asyncio.Event()
    h, client = await relaying(pki, tmp_path, dialer, "imaps", cfg=mail_config(pki, timeouts={"connect": 0.05}))
    await asyncio.sleep(0.2)
    # Told in IMAP, as for a refusing backend (the soak saw a bare EOF while Dovecot was stopping).
    assert client.recv(h) == b"* BYE [UNAVAILABLE] Service temporarily unavailable\r\n" and client.closed
    assert h.t.closed
    [ev] = events
    assert ev["reason"] == "timeout" and ev["detail"] == "backend_connect" and ev["phase"] == "backend_connect"
    dialer.hold.set()
    await settle()
    assert dialer.conns == []    # the connect was cancelled with the connection


@pytest.mark.parametrize("backend_full", [False, True], ids=["resumed", "still-full"])
async def test_client_paused_while_too_much_waits_for_the_greeting(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer, backend_full: bool) -> None:
    h, client = await relaying(pki, tmp_path, dialer, "imaps")
    backend, proto = dialer.last
    client.send(h, b"x" * 40000)
    assert not h.t.paused
    client.send(h, b"y" * 40000)
    assert h.t.paused            # more than PENDING_MAX held: stop reading the client
    # The flush fills the backend's buffer: its pause_writing stands, the client stays paused.
    backend.buffer_size = 10**6 if backend_full else 0
    proto.data_received(IMAP_GREETING)
    assert backend.take() == b"x" * 40000 + b"y" * 40000
    assert h.t.paused is backend_full


async def test_tls_buffers_released_after_the_handshake(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                        dialer: FakeDialer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[TlsSession] = []
    release = TlsSession.release_buffers
    monkeypatch.setattr(TlsSession, "release_buffers", lambda self: (calls.append(self), release(self))[1])
    h, _ = await relaying(pki, tmp_path, dialer, "tls")
    assert calls == [h.conn.tls]
    tls = h.conn.tls
    assert tls is not None and tls.grown == SMALL


async def test_tls_buffers_released_soon_after_a_big_chunk(pki: TestPki, tmp_path: Path,
                                                           events: list[dict[str, Any]], dialer: FakeDialer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front, "RELEASE_AFTER", 0.02)
    h, client = await relaying(pki, tmp_path, dialer, "tls")
    backend, proto = dialer.last
    tls = h.conn.tls
    assert tls is not None
    proto.data_received(b"a" * 65536)                     # a message fetched
    assert client.recv(h) == b"a" * 65536
    assert tls.grown == RELEASE_DUE
    await asyncio.sleep(0.1)
    assert tls.grown == SMALL and not h.t.closed and events == []
    client.send(h, b"b" * 65536)                          # one sent: the other direction
    assert backend.take() == b"b" * 65536
    # A bulk read is decrypted from a read-only BIO over the inbox, then a fresh memory BIO takes its place
    # (decision 0014): the session's read BIO never grew, so there is nothing to release.
    assert tls.grown == SMALL
    await asyncio.sleep(0.1)
    assert tls.grown == SMALL and not h.t.closed and events == []
    # still relaying both ways; the idle timer still runs; the card is still in the event at the end
    client.send(h, b"a NOOP\r\n")
    assert backend.take() == b"a NOOP\r\n"
    proto.data_received(b"a OK\r\n")
    assert client.recv(h) == b"a OK\r\n"
    assert h.conn._timer is not None
    client.close_notify(h)
    proto.eof_received()
    [ev] = events
    assert ev["reason"] == "ok" and ev["identity"]["idnat_ps"] == "810009876543"


async def test_idle_timeout_still_ends_a_connection_whose_buffers_were_released(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front, "RELEASE_AFTER", 0.02)
    h, client = await relaying(pki, tmp_path, dialer, "tls", cfg=mail_config(pki, timeouts={"idle": 0.2}))
    _, proto = dialer.last
    proto.data_received(b"a" * 65536)
    client.recv(h)
    await asyncio.sleep(0.1)
    tls = h.conn.tls
    assert tls is not None and tls.grown == SMALL and events == []
    await asyncio.sleep(0.3)
    [ev] = events
    assert ev["reason"] == "timeout" and ev["detail"] == "idle"


def _alive(*names: str) -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ in names)


@pytest.mark.parametrize(("listener", "greeting"), [("tls", None), ("imaps", b"* OK ready\r\n")])
async def test_a_finished_connection_is_freed_without_the_collector(
        pki: TestPki, tmp_path: Path, events: list[dict[str, Any]], dialer: FakeDialer, listener: str,
        greeting: bytes | None) -> None:
    """Issue 17: the halves (and the relay's callbacks) must not keep each other alive once the connection
    ended, or each finished connection waits, buffers and TLS session included, for a full collection."""
    kinds = ("ClientConnection", "MailBack", "TlsSession", "ImapRelay", "_Backend")
    gc.collect()
    before = _alive(*kinds)
    gc.disable()
    try:
        h, client = await relaying(pki, tmp_path, dialer, listener, greeting=greeting)
        backend, proto = dialer.last
        client.send(h, b"a NOOP\r\n")
        proto.data_received(b"a OK done\r\n")
        client.close_notify(h)
        proto.connection_lost(None)
        h.conn.connection_lost(None)
        assert [e["reason"] for e in events] == ["ok"]
        assert _alive(*kinds) > before
        del h, client, backend, proto
        dialer.conns.clear()
        assert _alive(*kinds) == before
    finally:
        gc.enable()
