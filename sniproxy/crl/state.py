"""Revocation state in force: per issuing CA, the base CRL and the delta on top, swapped atomically.

Owns the immutable ``RevocationView`` that handshakes read, the holder that swaps it, and the
decision for one verified chain (``check_chain``): revoked, CRL missing, CRL stale (refused, or
accepted within a grace period), or good. Pure: no I/O, the clock is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Protocol

from cryptography import x509

from sniproxy.crl.index import REMOVE_FROM_CRL, Revoked, RevokedIndex
from sniproxy.crl.validate import CrlMeta, ca_key
from sniproxy.errors import Reason


@dataclass(frozen=True, slots=True)
class LoadedCrl:
    """A validated CRL in force: its facts, its index, and where it came from."""

    meta: CrlMeta
    index: RevokedIndex
    source: str


@dataclass(frozen=True, slots=True)
class IssuerState:
    """The CRLs in force for one issuing CA."""

    base: LoadedCrl
    delta: LoadedCrl | None = None

    @property
    def fresh_until(self) -> float:
        """When the information stops being current: the earliest nextUpdate of base and delta."""
        if self.delta is None:
            return self.base.meta.next_update
        return min(self.base.meta.next_update, self.delta.meta.next_update)

    def lookup(self, serial: int) -> Revoked | None:
        """The revocation of ``serial``: the delta first (it may also un-hold a certificate), then the base."""
        if self.delta is not None:
            hit = self.delta.index.lookup(serial)
            if hit is not None:
                return None if hit.reason == REMOVE_FROM_CRL else hit
        hit = self.base.index.lookup(serial)
        # removeFromCRL only has meaning in a delta; in a base it is malformed: treat as revoked.
        return hit


_EMPTY: Mapping[bytes, IssuerState] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RevocationView:
    """Every issuer's CRLs at one moment; a refresh builds a new view and swaps it."""

    issuers: Mapping[bytes, IssuerState] = field(default_factory=lambda: _EMPTY)
    generation: int = 0

    def with_issuer(self, key: bytes, state: IssuerState) -> RevocationView:
        """A new view with ``state`` for issuer ``key``."""
        issuers = dict(self.issuers)
        issuers[key] = state
        return RevocationView(MappingProxyType(issuers), self.generation + 1)


class RevocationHolder:
    """The view in force. Handshakes read ``current``; the CRL manager calls ``swap`` (one store, atomic)."""

    __slots__ = ("current",)

    def __init__(self, view: RevocationView | None = None) -> None:
        self.current = view or RevocationView()

    def swap(self, view: RevocationView) -> None:
        """Install ``view``."""
        self.current = view


class RevocationSettings(Protocol):
    """An authority set's revocation settings as the config states them (``config.model.AuthoritySet``)."""

    @property
    def revocation_required(self) -> bool:
        """True when the set names CRL sources."""

    @property
    def crl_check(self) -> str:
        """``chain`` (the card and the intermediates) or ``leaf`` (the card only)."""

    @property
    def crl_grace(self) -> float | None:
        """Seconds a stale CRL is still accepted; None: none."""


@dataclass(frozen=True, slots=True)
class RevocationPolicy:
    """How an authority set treats revocation. ``required`` is false only when no CRL is configured."""

    required: bool = False
    chain: bool = True              # check intermediates too, not only the card
    grace: float | None = None      # None: fail-closed once nextUpdate has passed

    @classmethod
    def of(cls, settings: RevocationSettings) -> RevocationPolicy:
        """The runtime policy of an authority set: the one place the config's settings become a policy."""
        return cls(required=settings.revocation_required, chain=settings.crl_check == "chain",
                   grace=settings.crl_grace)


@dataclass(slots=True)
class Verdict:
    """The revocation outcome for a chain: ``reason`` None means accepted."""

    reason: Reason | None = None
    detail: str = ""
    revoked: Revoked | None = None
    depth: int = 0
    grace_issuers: list[str] = field(default_factory=list)


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else "unknown date"


def check_chain(view: RevocationView, policy: RevocationPolicy, chain: Sequence[x509.Certificate],
                now: float) -> Verdict:
    """Check ``chain`` (leaf first, each certificate followed by its issuer) against ``view``.

    A revocation found in a CRL wins over staleness: an old CRL still proves a revocation.
    """
    verdict = Verdict()
    if not policy.required:
        return verdict
    last = len(chain) - 1 if policy.chain else min(1, len(chain) - 1)
    # One lookup per issuer: ca_key hashes the CA's name and key, on every handshake.
    states = [view.issuers.get(ca_key(chain[depth + 1])) for depth in range(last)]
    # A revocation anywhere in the chain is the reason, even when another CRL is stale or missing.
    for depth, state in enumerate(states):
        hit = state.lookup(chain[depth].serial_number) if state is not None else None
        if hit is not None:
            who = chain[depth + 1].subject.rfc4514_string()
            verdict.reason, verdict.revoked, verdict.depth = Reason.REVOKED, hit, depth
            verdict.detail = (f"serial {chain[depth].serial_number:x} revoked on {_iso(hit.date)} "
                              f"reason {hit.reason_name} by {who} (depth {depth})")
            return verdict
    for depth, state in enumerate(states):
        who = chain[depth + 1].subject.rfc4514_string() if state is None or now > state.fresh_until else ""
        if state is None:
            verdict.reason, verdict.depth = Reason.CRL_MISSING, depth
            verdict.detail = f"no CRL in force for {who} (depth {depth})"
            return verdict
        fresh_until = state.fresh_until
        if now > fresh_until:
            if policy.grace is not None and now <= fresh_until + policy.grace:
                verdict.grace_issuers.append(who)
                continue
            verdict.reason, verdict.depth = Reason.CRL_STALE, depth
            verdict.detail = f"CRL of {who} stale since {_iso(fresh_until)} (depth {depth})"
            return verdict
    return verdict
