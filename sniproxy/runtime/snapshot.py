"""The runtime snapshot: a validated ``Config`` compiled into what connections serve from.

Owns: ``Snapshot`` (flow contexts and rules, listener route tables, the CRL state they consult, a
generation number), its compilation from the model, and ``SnapshotHolder``, the one place a reload
swaps it. A connection reads the holder once, at accept, and keeps that snapshot to its end. Must not:
touch sockets or the event loop (compiling reads certificate files).
"""

from __future__ import annotations

from dataclasses import dataclass

from sniproxy.config.model import ClientAuth, Config, Listener, Profile
from sniproxy.crl.state import RevocationHolder
from sniproxy.routing import RouteTable
from sniproxy.tls.contexts import FlowRuntime, authority_trust, build_flow_context
from sniproxy.tls.verify import FlowRules


@dataclass(frozen=True, slots=True)
class ListenerRuntime:
    """A listener's config and its compiled route table."""

    listener: Listener
    routes: RouteTable


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a connection needs, immutable; a reload builds a new one and swaps it."""

    config: Config
    flows: dict[str, FlowRuntime]
    listeners: dict[str, ListenerRuntime]
    generation: int = 0
    revocation: RevocationHolder | None = None


def compile_snapshot(config: Config, generation: int = 0, revocation: RevocationHolder | None = None) -> Snapshot:
    """Build every flow context and route table of a config.

    ``revocation`` is the CRL state the flows consult; it outlives snapshots (a reload keeps the
    CRLs in force). A new empty one is made when not given: authority sets that name CRL sources
    then refuse every card (``crl_missing``) until a CRL manager fills it.
    """
    if revocation is None:
        revocation = RevocationHolder()
    trust = {name: authority_trust(a) for name, a in config.authorities.items() if a.enabled}
    flows: dict[str, FlowRuntime] = {}
    for name, flow in config.flows.items():
        auths = tuple(trust[a] for a in flow.authorities if a in trust)
        refuse_test = flow.refuse_test_cards
        if refuse_test is None:
            refuse_test = config.profile is Profile.PRODUCTION
        rules = FlowRules(
            flow=name,
            profile=config.profile,
            authorities=auths,
            card_types=frozenset(flow.card_types),
            refuse_test_cards=refuse_test,
            require_cert=flow.client_auth is ClientAuth.REQUIRED,
            revocation=revocation,
        )
        flows[name] = FlowRuntime(flow, build_flow_context(flow, auths), rules)
    listeners = {ls.name: ListenerRuntime(ls, RouteTable.from_listener(ls)) for ls in config.listeners}
    return Snapshot(config, flows, listeners, generation, revocation)


class SnapshotHolder:
    """Holds the current snapshot; a connection reads ``current`` once, at accept, and keeps it."""

    __slots__ = ("current",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot:
        """Install a new snapshot (one attribute store: atomic for the event loop) and return the old."""
        old, self.current = self.current, snapshot
        return old
