"""The front half's phases over in-memory transports: PROXY header in, pre-TLS dialog, ClientHello,
handshake and card, timers, admission, and the hand-over to the back half."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sniproxy.card import CardIdentity, UnreadableCard, identity_fields, read_card
from sniproxy.demo.pki import TestPki
from sniproxy.driver import shared
from sniproxy.driver.shared import card_of
from tests.unit.driver.kit import IMAP_SNI, FakeDialer, Harness, TlsClient, mail_config, settle, snapshot

V1_HEADER = b"PROXY TCP4 198.51.100.7 127.0.0.1 51234 10994\r\n"


@pytest.mark.parametrize("chunks", [[V1_HEADER], [V1_HEADER[:3], V1_HEADER[3:]]], ids=["whole", "split"])
async def test_proxy_header_from_untrusted_peer_refused(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                  chunks: list[bytes]) -> None:
    h = Harness(snapshot(mail_config(pki, proxy_protocol_from=["10.0.0.0/8"]), tmp_path), "tls")
    for chunk in chunks:
        h.send(chunk)
    assert h.t.closed and h.t.out == b""
    [ev] = events
    assert ev["reason"] == "untrusted_proxy_header" and ev["phase"] == "client_hello"
    assert ev["peer"] == "127.0.0.1:40000" and "via" not in ev and ev["outcome"] == "refused"


async def test_trusted_balancer_header_names_the_client(pki: TestPki, tmp_path: Path,
                                                       events: list[dict[str, Any]]) -> None:
    h = Harness(snapshot(mail_config(pki, proxy_protocol_from=["127.0.0.0/8"]), tmp_path), "tls")
    h.send(V1_HEADER + b"GET / HTTP/1.1\r\n\r\n")
    [ev] = events
    assert ev["reason"] == "bad_client_hello" and ev["phase"] == "client_hello"
    assert ev["peer"] == "198.51.100.7:51234" and ev["via"] == "127.0.0.1:40000"


async def test_trusted_balancer_without_header_refused(pki: TestPki, tmp_path: Path,
                                                      events: list[dict[str, Any]]) -> None:
    h = Harness(snapshot(mail_config(pki, proxy_protocol_from=["127.0.0.0/8"]), tmp_path), "tls")
    h.send(TlsClient(pki).hello())
    [ev] = events
    assert ev["reason"] == "bad_proxy_header" and ev["phase"] == "proxy_header"


@pytest.mark.parametrize(("listener", "dialog", "answer"), [
    ("imap", [b"a STARTTLS\r\nb NOOP\r\n"], b"a BAD [CLIENTBUG] Data pipelined after STARTTLS\r\n"),
    ("smtp", [b"EHLO client.test\r\n", b"STARTTLS\r\nMAIL FROM:<a@b>\r\n"],
     b"554 5.5.1 Error: command pipelined after STARTTLS\r\n"),
])
async def test_starttls_injection_refused(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                    listener: str, dialog: list[bytes], answer: bytes) -> None:
    h = Harness(snapshot(mail_config(pki), tmp_path), listener)
    greeting = h.t.take()
    assert greeting.startswith(b"* OK" if listener == "imap" else b"220 ")
    for line in dialog:
        h.send(line)
    assert h.t.out.endswith(answer) and h.t.closed
    [ev] = events
    assert ev["reason"] == "starttls_injection" and ev["phase"] == "pretls" and "tls_version" not in ev


@pytest.mark.parametrize(("listener", "phase"), [("imap", "pretls"), ("tls", "client_hello"), ("imaps", "handshake")])
async def test_client_eof_before_handshake(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                     listener: str, phase: str) -> None:
    h = Harness(snapshot(mail_config(pki), tmp_path), listener)
    hello = TlsClient(pki, sni=IMAP_SNI).hello()
    if phase == "client_hello":
        h.send(hello[:20])
    elif phase == "handshake":
        h.send(hello)
    assert h.conn.eof_received() is False
    assert h.t.closed
    [ev] = events
    assert ev["reason"] == "client_closed" and ev["detail"] == phase and ev["phase"] == phase
    assert ev["outcome"] == "closed"


async def test_unknown_sni_gets_the_alert(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]]) -> None:
    h = Harness(snapshot(mail_config(pki, unknown_sni="reject"), tmp_path), "tls")
    h.send(TlsClient(pki, sni="nobody.example").hello())
    assert h.t.out == bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]) and h.t.closed
    [ev] = events
    assert ev["reason"] == "unknown_sni" and ev["sni"] == "nobody.example" and ev["flow"] is None


async def test_pretls_timeout(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]]) -> None:
    h = Harness(snapshot(mail_config(pki, timeouts={"pretls": 0.05}), tmp_path), "imap")
    await asyncio.sleep(0.2)
    [ev] = events
    assert ev["reason"] == "timeout" and ev["detail"] == "pretls" and h.t.closed


async def test_refused_card_ends_in_handshake(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                              dialer: FakeDialer) -> None:
    h = Harness(snapshot(mail_config(pki), tmp_path), "imaps")
    TlsClient(pki, card="unknown-ca", sni=IMAP_SNI).handshake(h)
    await settle()
    [ev] = events
    assert ev["phase"] == "handshake" and ev["outcome"] == "refused" and ev["reason"] == "unknown_ca"
    assert dialer.conns == []   # never reached the backend


async def test_verified_card_hands_over_with_identity(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                      dialer: FakeDialer) -> None:
    h = Harness(snapshot(mail_config(pki), tmp_path), "tls")
    client = TlsClient(pki, sni=IMAP_SNI)
    client.handshake(h)
    assert isinstance(h.conn.card, CardIdentity) and h.conn.flow == "2bis" and h.conn.sni == IMAP_SNI
    await settle()
    backend, proto = dialer.last
    proto.data_received(b"bye")
    proto.eof_received()
    assert client.recv(h) == b"bye" and client.closed and h.t.closed and backend.closed
    [ev] = events
    assert ev["reason"] == "ok" and ev["detail"] == "backend closed" and ev["phase"] == "relay"
    assert ev["identity"] == identity_fields(h.conn.card) and ev["identity"]["idnat_ps"]
    assert ev["tls_version"] == "TLSv1.3" and ev["flow"] == "2bis"


async def test_admission_sheds_in_the_protocol(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]]) -> None:
    cfg = mail_config(pki)
    cfg["limits"] = {"max_connections": 1}
    snap = snapshot(cfg, tmp_path)
    first = Harness(snap, "imap")
    second = Harness(snap, "imap")
    assert second.t.out == b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n" and second.t.closed
    [ev] = events
    assert ev["reason"] == "too_many_connections" and ev["conn_id"] == second.conn.id
    assert not first.t.closed


def _leaf(pki: TestPki, card: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.cards[card].cert.read_bytes())


def test_connections_with_the_same_card_share_one_identity(pki: TestPki) -> None:
    # a fresh parse of the same DER each time, as each handshake gives
    a, b = card_of(_leaf(pki, "fort"), "igc-sante-fort-pp"), card_of(_leaf(pki, "fort"), "igc-sante-fort-pp")
    assert isinstance(a, CardIdentity) and a is b
    assert a == read_card(_leaf(pki, "fort"), "igc-sante-fort-pp")
    other_authority = card_of(_leaf(pki, "fort"), None)
    assert other_authority is not a and other_authority == read_card(_leaf(pki, "fort"), None)
    other_card = card_of(_leaf(pki, "fort-liberal"), "igc-sante-fort-pp")
    assert isinstance(other_card, CardIdentity) and other_card.sha256 != a.sha256


def test_a_shared_identity_goes_with_its_last_holder(pki: TestPki) -> None:
    card = card_of(_leaf(pki, "fort"), "x")
    assert any(v is card for v in shared._CARDS.values())
    del card
    gc.collect()
    assert not any(k[1] == "x" for k in shared._CARDS.keys())


def test_an_unreadable_card_is_not_shared(pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "read_card", lambda leaf, authority: UnreadableCard("ValueError"))
    assert card_of(_leaf(pki, "fort"), "y") == UnreadableCard("ValueError")
    assert not any(k[1] == "y" for k in shared._CARDS.keys())


async def test_two_connections_with_one_card_log_it_each(pki: TestPki, tmp_path: Path,
                                                         events: list[dict[str, Any]], dialer: FakeDialer) -> None:
    snap = snapshot(mail_config(pki), tmp_path)
    hs = [Harness(snap, "tls") for _ in range(2)]
    for h in hs:
        TlsClient(pki, sni=IMAP_SNI).handshake(h)
    await settle()
    assert hs[0].conn.card is hs[1].conn.card is not None
    for h in hs:
        h.conn.goodbye()
    assert [ev["identity"] for ev in events] == [identity_fields(hs[0].conn.card)] * 2
    assert events[0]["identity"]["idnat_ps"] == "810009876543"
