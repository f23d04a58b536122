"""SNI to flow, pure: exact names first, then the longest ``*.`` wildcard, then the default flow.

A wildcard covers exactly one label (``*.example.org`` matches ``a.example.org``, not
``a.b.example.org``), as certificate name matching does (RFC 6125 §6.4.3), so a route never
reaches further than the certificate it serves could.
"""

from __future__ import annotations

from dataclasses import dataclass

from sniproxy.config.model import Listener, UnknownSni


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The compiled routes of one listener."""

    exact: dict[str, str]
    wildcards: dict[str, str]          # parent domain (after "*.") -> flow
    default: str | None
    reject_unknown: bool

    @classmethod
    def from_listener(cls, listener: Listener) -> RouteTable:
        """Compile a listener's routes (names are already lower-case and unique per listener)."""
        exact: dict[str, str] = {}
        wild: dict[str, str] = {}
        for route in listener.routes:
            for name in route.names:
                if name.startswith("*."):
                    wild[name[2:]] = route.flow
                else:
                    exact[name] = route.flow
        return cls(exact, wild, listener.default_flow, listener.unknown_sni is UnknownSni.REJECT)

    def choose(self, sni: str | None) -> str | None:
        """Return the flow name for this SNI, or None when the connection must be refused.

        No SNI always gets the default flow: bi-flux requires the legacy flow for clients that
        send none (docs/domain.md, notice §4.1).
        """
        if sni is None:
            return self.default
        name = sni.lower().rstrip(".")
        flow = self.exact.get(name)
        if flow is not None:
            return flow
        _, dot, parent = name.partition(".")
        if dot:
            flow = self.wildcards.get(parent)
            if flow is not None:
                return flow
        return None if self.reject_unknown else self.default
