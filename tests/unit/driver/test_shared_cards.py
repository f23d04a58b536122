"""The card identities a worker remembers (``driver.shared.card_of``): shared among live connections, and the
last ``RECENT_CARDS`` read remembered for clients that reconnect after their last connection closed."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256

from sniproxy.card import CardIdentity, UnreadableCard, read_card
from sniproxy.demo.pki import TestPki
from sniproxy.driver import shared
from sniproxy.driver.shared import card_of
from tests.unit.driver.kit import FakeDialer, Harness, TlsClient, mail_config, settle, snapshot

FORT_SET = "igc-sante-fort-pp"


def _leaf(pki: TestPki, card: str = "fort") -> x509.Certificate:
    # a fresh parse of the same DER each time, as each handshake gives
    return x509.load_pem_x509_certificate(pki.cards[card].cert.read_bytes())


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str | None]]:
    """The authorities ``read_card`` was called with, from empty card tables."""
    monkeypatch.setattr(shared, "_CARDS", type(shared._CARDS)())
    monkeypatch.setattr(shared, "_RECENT", {})
    seen: list[str | None] = []

    def counting(leaf: x509.Certificate, authority: str | None) -> CardIdentity | UnreadableCard:
        seen.append(authority)
        return read_card(leaf, authority)

    monkeypatch.setattr(shared, "read_card", counting)
    yield seen


def _gone(authority: str | None) -> bool:
    gc.collect()
    return not any(k[1] == authority for k in shared._CARDS.keys())


def test_a_reconnect_after_the_last_holder_left_skips_the_parse(pki: TestPki, reads: list[str | None]) -> None:
    first = card_of(_leaf(pki), FORT_SET)
    assert isinstance(first, CardIdentity) and reads == [FORT_SET]
    expected = read_card(_leaf(pki), FORT_SET)
    del first
    assert _gone(FORT_SET)   # no live holder: the shared identity went (test_front pins that)
    again = card_of(_leaf(pki), FORT_SET)
    assert reads == [FORT_SET]   # not read again
    assert again == expected and isinstance(again, CardIdentity)
    assert card_of(_leaf(pki), FORT_SET) is again   # and shared again with the live connections
    assert reads == [FORT_SET]


def test_another_authority_is_another_card(pki: TestPki, reads: list[str | None]) -> None:
    a = card_of(_leaf(pki), "a")
    b = card_of(_leaf(pki), "b")
    assert reads == ["a", "b"]
    assert isinstance(a, CardIdentity) and isinstance(b, CardIdentity)
    assert a.authority == "a" and b.authority == "b"
    del a, b
    assert _gone("a") and _gone("b")
    a2, b2 = card_of(_leaf(pki), "a"), card_of(_leaf(pki), "b")
    assert reads == ["a", "b"]
    assert isinstance(a2, CardIdentity) and isinstance(b2, CardIdentity)
    assert (a2.authority, b2.authority) == ("a", "b")
    other = card_of(_leaf(pki, "fort-liberal"), "a")   # another leaf, same authority: read
    assert reads == ["a", "b", "a"] and isinstance(other, CardIdentity) and other.sha256 != a2.sha256


def test_the_recent_cards_are_bounded(pki: TestPki, reads: list[str | None]) -> None:
    n = shared.RECENT_CARDS
    assert n == 256
    for i in range(n + 10):
        card_of(_leaf(pki), f"set-{i}")
    assert len(shared._RECENT) == n and len(reads) == n + 10
    assert ("set-9" not in {k[1] for k in shared._RECENT}) and ("set-10" in {k[1] for k in shared._RECENT})
    gc.collect()
    card_of(_leaf(pki), "set-0")   # the oldest went: read again
    assert reads[-1] == "set-0" and len(shared._RECENT) == n


def test_the_least_recently_used_goes_first(pki: TestPki, reads: list[str | None],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "RECENT_CARDS", 3)
    for name in ("a", "b", "c"):
        card_of(_leaf(pki), name)
    gc.collect()
    card_of(_leaf(pki), "a")   # a reconnect: "a" becomes the most recent
    card_of(_leaf(pki), "d")   # pushes out "b", not "a"
    assert [k[1] for k in shared._RECENT] == ["c", "a", "d"]
    gc.collect()
    card_of(_leaf(pki), "a")
    assert reads == ["a", "b", "c", "d"]
    card_of(_leaf(pki), "b")
    assert reads == ["a", "b", "c", "d", "b"]


def test_a_card_held_live_is_remembered_again_at_its_next_handshake(pki: TestPki, reads: list[str | None],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "RECENT_CARDS", 1)
    held = card_of(_leaf(pki), "a")
    card_of(_leaf(pki), "b")   # "a" leaves the recent ones while a connection still holds it
    assert [k[1] for k in shared._RECENT] == ["b"]
    assert card_of(_leaf(pki), "a") is held   # shared with the live holder, and remembered again
    assert [k[1] for k in shared._RECENT] == ["a"]
    del held
    assert _gone("a")
    card_of(_leaf(pki), "a")
    assert reads == ["a", "b"]


def test_an_unreadable_card_is_not_remembered(pki: TestPki, reads: list[str | None],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "read_card", lambda leaf, authority: UnreadableCard("ValueError"))
    assert card_of(_leaf(pki), "y") == UnreadableCard("ValueError")
    assert card_of(_leaf(pki), "y") == UnreadableCard("ValueError")
    assert not shared._RECENT and not any(k[1] == "y" for k in shared._CARDS.keys())


def test_the_key_is_the_leafs_sha256_and_the_authority(pki: TestPki, reads: list[str | None]) -> None:
    card_of(_leaf(pki), FORT_SET)
    assert list(shared._RECENT) == [(_leaf(pki).fingerprint(SHA256()), FORT_SET)]


def test_the_recent_cards_stay_small(pki: TestPki, reads: list[str | None]) -> None:
    # what one remembered card costs beyond its key: its values' tuple and their strings (no live holder)
    card_of(_leaf(pki), FORT_SET)
    gc.collect()
    [values] = shared._RECENT.values()
    own = sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values if isinstance(v, str))
    assert own < 2048


async def test_a_remembered_card_still_goes_through_verification(pki: TestPki, tmp_path: Path,
                                                                 events: list[dict[str, Any]], dialer: FakeDialer,
                                                                 reads: list[str | None]) -> None:
    (tmp_path / "on").mkdir()
    h = Harness(snapshot(mail_config(pki), tmp_path / "on"), "tls")
    TlsClient(pki, card="fort").handshake(h)
    await settle()
    assert events == [] and reads == [FORT_SET] and len(dialer.conns) == 1   # verified, read, remembered
    h.conn.goodbye()
    await settle()
    events.clear()
    # The same card after a reload that no longer trusts its authority: refused in the handshake, remembered or not.
    cfg = mail_config(pki)
    cfg["authorities"][FORT_SET]["enabled"] = False
    (tmp_path / "off").mkdir()
    h2 = Harness(snapshot(cfg, tmp_path / "off"), "tls")
    TlsClient(pki, card="fort").handshake(h2)
    await settle()
    [ev] = events
    assert ev["phase"] == "handshake" and ev["outcome"] == "refused"
    assert len(dialer.conns) == 1 and reads == [FORT_SET]
