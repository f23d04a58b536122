"""Every metric defined once, with bounded labels only (never an SNI, a CN, a serial or an IP).

In-process counters for now; the Prometheus exposition and the admin endpoint come with the
metrics issue and will read this registry, so names and labels here are the public contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Counter:
    """A monotonic counter with a fixed tuple of label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series named by ``label_values`` (one per label name)."""
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: expected labels {self.labels}, got {label_values}")
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def get(self, *label_values: str) -> float:
        """The current value of one series (0 when never incremented)."""
        return self.values.get(label_values, 0.0)


REGISTRY: dict[str, Counter] = {}


def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
    """Define a counter once (module import time) and register it."""
    if name in REGISTRY:
        raise ValueError(f"metric {name} defined twice")
    c = Counter(name, help, labels)
    REGISTRY[name] = c
    return c


CRL_FETCHES = counter("sniproxy_crl_fetch_total", "CRL fetch attempts by authority set and result "
                      "(updated, not_modified, or the refusal reason)", ("authority", "result"))
CRL_GRACE_ACCEPTS = counter("sniproxy_crl_grace_accepts_total",
                            "Cards accepted while a CRL of their chain was stale, within the grace period",
                            ("authority",))
