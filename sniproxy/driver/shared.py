"""What the halves of the connection driver share: phase names, buffer limits, worker-wide state.

Owns: the phase numbers and their public names (the ``phase`` field of the ``connection`` event),
the write high-water mark and the plaintext-held limit, the worker's connection counters (``STATS``),
its set of live connections (``LIVE``), its drain flag (``Drain``), the event observers
(``OBSERVERS``) and the card identities live connections share and the last ones read (``card_of``).
Must not: import the halves (they import this), hold per-connection state, or do I/O.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256

from sniproxy.card import CardIdentity, UnreadableCard, read_card

PENDING_MAX = 65536   # plaintext held while the backend is not ready, before pausing the client
WRITE_HIGH = 65536    # transport write buffer high-water mark, per direction

# Plain ints, not an enum: the relay path compares the phase on every record.
PROXY_HEADER, PRETLS, CLIENT_HELLO, HANDSHAKE, BACKEND_CONNECT, RELAY, CLOSED, ACCEPT = range(8)
# ACCEPT only names the event of a connection that died in the accept queue: no code path compares it.
PHASE_NAMES = ("proxy_header", "pretls", "client_hello", "handshake", "backend_connect", "relay", "closed",
               "accept")


class Stats:
    """Process-wide counters: admission limits read them, tests and the ``stats`` event report them.

    ``pending`` counts connections not yet relaying (pre-TLS, handshake, backend connect): where a
    slowloris or a handshake flood sits. ``per_ip`` and ``pending_per_ip`` hold only addresses with
    at least one connection (entries are removed at zero, so the tables stay bounded by the limits).
    """

    __slots__ = ("accepted", "active", "by_reason", "pending", "pending_per_ip", "per_ip")

    def __init__(self) -> None:
        self.accepted = 0
        self.active = 0
        self.pending = 0
        self.per_ip: dict[str, int] = {}
        self.pending_per_ip: dict[str, int] = {}
        self.by_reason: dict[str, int] = {}

    def report(self) -> dict[str, Any]:
        """The counters as one event's fields."""
        return {"accepted": self.accepted, "active": self.active, "pending": self.pending,
                "client_addresses": len(self.per_ip), "pending_addresses": len(self.pending_per_ip),
                "by_reason": dict(self.by_reason)}


def decrement(table: dict[str, int], key: str) -> None:
    """One less under ``key``; the entry goes at zero (the tables stay bounded)."""
    n = table.get(key, 0) - 1
    if n > 0:
        table[key] = n
    else:
        table.pop(key, None)


class LiveConnection(Protocol):
    """What a drain needs of a connection."""

    def drain_begin(self) -> None:
        """The worker started draining."""

    def goodbye(self) -> None:
        """End now, with the protocol's goodbye."""


class Drain:
    """Worker-wide drain state: set once by the worker's drain, read by connections."""

    active = False


STATS = Stats()
# Every connection not yet finished, so a drain can say goodbye to each (a worker-wide set: one
# pointer per connection, no per-connection task).
LIVE: set[LiveConnection] = set()
# Called with every connection event (the same dict that is logged). The demo and the metrics
# layer subscribe here; an observer must be quick and must not raise.
OBSERVERS: list[Callable[[dict[str, Any]], None]] = []

# The identity of every card a live connection holds, by (leaf SHA-256, authority): connections with the
# same card share one immutable CardIdentity (and skip its parsing); an entry goes with its last holder.
_CARDS: weakref.WeakValueDictionary[tuple[bytes, str | None], CardIdentity] = weakref.WeakValueDictionary()

# The values of the last RECENT_CARDS identities read, by the same key, least recently used first: a client that
# reconnects after its last connection closed (no live holder left in _CARDS) skips the parse too (decision 0015:
# about 1.1 M instructions a connection; timeit: read_card 271 us, rebuilding from the values 2.5 us). Values, not the
# identity itself: an identity held here would keep its _CARDS entry alive with no connection holding it.
# An identity is a pure function of the leaf's DER and the authority's name (no config, no clock), so a reload
# does not clear it; the chain's verification and revocation run at every handshake, before card_of is called.
RECENT_CARDS = 256
_RECENT: dict[tuple[bytes, str | None], tuple[Any, ...]] = {}
_FIELDS = tuple(f.name for f in fields(CardIdentity))


def card_of(leaf: x509.Certificate, authority: str | None) -> CardIdentity | UnreadableCard:
    """``read_card(leaf, authority)``, shared with the live connections that presented the same card and
    remembered for the last ``RECENT_CARDS`` cards read (an unreadable card is neither shared nor remembered)."""
    key = (leaf.fingerprint(SHA256()), authority)
    card = _CARDS.get(key)
    values = _RECENT.pop(key, None)
    if card is None:
        if values is None:
            read = read_card(leaf, authority)
            if not isinstance(read, CardIdentity):
                return read
            card = read
        else:
            card = CardIdentity(*values)
        _CARDS[key] = card
    if values is None:   # read now, or held live but dropped from the recent ones meanwhile
        values = tuple([getattr(card, name) for name in _FIELDS])
        if len(_RECENT) >= RECENT_CARDS:
            del _RECENT[next(iter(_RECENT))]   # the least recently used (a dict keeps insertion order)
    _RECENT[key] = values   # (re)inserted last: the most recently used
    return card
