"""Every metric defined once, with bounded labels only (never an SNI, a CN, a serial or an IP).

Names and labels here are the public contract (docs/metrics.md). Each metric keeps its values in
process (tests and the ``stats`` event read them) and, once ``sniproxy.observability.prom``
installed the Prometheus exposition, forwards every change to its Prometheus twin (``sink``),
which with ``workers: N`` writes it to a per-process file the admin endpoint sums at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Histogram buckets of the handshake duration, seconds: a TLS handshake on loopback takes about a
#: millisecond, a card over a slow mobile link a second or more; the timeout is 15 s by default.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Metric:
    """A metric with a fixed tuple of label names; ``kind`` is counter, gauge or histogram."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    kind: str = "counter"
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    sink: Any = None          # the prometheus_client twin, once installed
    children: dict[tuple[str, ...], Any] = field(default_factory=dict)   # the twin's series, by labels
    mode: str = "livesum"     # gauges: how workers' values combine (prometheus_client multiprocess_mode)
    buckets: tuple[float, ...] = ()

    def _check(self, label_values: tuple[str, ...]) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: expected labels {self.labels}, got {label_values}")

    def get(self, *label_values: str) -> float:
        """The current value of one series (0 when never changed; a histogram's count)."""
        return self.values.get(label_values, 0.0)

    def _series(self, label_values: tuple[str, ...]) -> Any:
        # prometheus_client's labels() validates and locks on every call: once per series is enough.
        child = self.children.get(label_values)
        if child is None:
            child = self.children[label_values] = self.sink.labels(*label_values) if label_values else self.sink
        return child


class Counter(Metric):
    """A monotonic counter."""

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series named by ``label_values`` (one per label name)."""
        self._check(label_values)
        self.values[label_values] = self.values.get(label_values, 0.0) + amount
        if self.sink is not None:
            self._series(label_values).inc(amount)


class Gauge(Metric):
    """A value that goes up and down (or is set)."""

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        """Add ``amount`` (negative to subtract)."""
        self._check(label_values)
        self.values[label_values] = self.values.get(label_values, 0.0) + amount
        if self.sink is not None:
            self._series(label_values).inc(amount)

    def dec(self, *label_values: str) -> None:
        """Subtract one."""
        self.inc(*label_values, amount=-1.0)

    def set(self, *label_values: str, value: float) -> None:
        """Set the series to ``value``."""
        self._check(label_values)
        self.values[label_values] = value
        if self.sink is not None:
            self._series(label_values).set(value)


class Histogram(Metric):
    """Observations in buckets; in process only their count is kept (``get``)."""

    def observe(self, *label_values: str, value: float) -> None:
        """Record one observation."""
        self._check(label_values)
        self.values[label_values] = self.values.get(label_values, 0.0) + 1
        if self.sink is not None:
            self._series(label_values).observe(value)


REGISTRY: dict[str, Metric] = {}


def _register(metric: Metric) -> Any:
    if metric.name in REGISTRY:
        raise ValueError(f"metric {metric.name} defined twice")
    REGISTRY[metric.name] = metric
    return metric


def counter(name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
    """Define a counter once (module import time) and register it."""
    c: Counter = _register(Counter(name, help, labels))
    return c


def gauge(name: str, help: str, labels: tuple[str, ...] = (), mode: str = "livesum") -> Gauge:
    """Define a gauge once; ``mode`` says how the workers' values combine (``livesum``, ``max``...)."""
    g: Gauge = _register(Gauge(name, help, labels, kind="gauge", mode=mode))
    return g


def histogram(name: str, help: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
    """Define a histogram once."""
    h: Histogram = _register(Histogram(name, help, labels, kind="histogram", buckets=buckets))
    return h


# -- connections (every worker) ---------------------------------------------------------------------
CONNECTIONS = counter("sniproxy_connections_total",
                      "Connections ended, by listener, protocol, flow (empty before the flow is chosen), "
                      "outcome (ok, closed, refused) and reason", ("listener", "protocol", "flow", "outcome", "reason"))
ACTIVE = gauge("sniproxy_connections_active", "Connections open now (any phase), summed over live workers",
               ("listener", "protocol"))
HANDSHAKES = histogram("sniproxy_handshake_duration_seconds",
                       "TLS handshakes completed, from the ClientHello to the verified card, seconds",
                       ("listener", "flow"), HANDSHAKE_BUCKETS)
BYTES = counter("sniproxy_client_bytes_total",
                "Bytes exchanged with clients (TLS records included), counted when the connection ends; "
                "direction in: from the client, out: to the client", ("listener", "flow", "direction"))
BACKEND_ERRORS = counter("sniproxy_backend_errors_total",
                         "Connections ended by a backend problem, by listener and reason "
                         "(backend_unavailable, backend_refused, backend_protocol, backend_timeout)",
                         ("listener", "reason"))
LIMITS_HIT = counter("sniproxy_limits_hit_total",
                     "Connections shed at accept by an admission limit, by listener and limit "
                     "(too_many_connections, too_many_from_ip, too_many_handshakes)", ("listener", "limit"))
# -- configuration (the supervisor) -----------------------------------------------------------------
RELOADS = counter("sniproxy_reloads_total", "Configuration reloads by result (ok, failed)", ("result",))
# -- CRLs (the fetcher) ------------------------------------------------------------------------------
CRL_FETCHES = counter("sniproxy_crl_fetch_total", "CRL fetch attempts by authority set and result "
                      "(updated, not_modified, or the refusal reason)", ("authority", "result"))
CRL_FETCH_FAILURES = counter("sniproxy_crl_fetch_failures_total",
                             "CRL fetches that did not give a usable CRL, by authority set, source and reason",
                             ("authority", "source", "reason"))
CRL_GRACE_ACCEPTS = counter("sniproxy_crl_grace_accepts_total",
                            "Cards accepted while a CRL of their chain was stale, within the grace period",
                            ("authority",))

_BACKEND_REASONS = frozenset({"backend_unavailable", "backend_refused", "backend_protocol", "backend_timeout"})
_LIMIT_REASONS = frozenset({"too_many_connections", "too_many_from_ip", "too_many_handshakes"})


def connection_ended(listener: str, protocol: str, flow: str | None, outcome: str, reason: str,
                     bytes_in: int, bytes_out: int) -> None:
    """Count one ended connection in every metric it belongs to (called once per connection)."""
    f = flow or ""
    CONNECTIONS.inc(listener, protocol, f, outcome, reason)
    ACTIVE.dec(listener, protocol)
    if bytes_in:
        BYTES.inc(listener, f, "in", amount=bytes_in)
    if bytes_out:
        BYTES.inc(listener, f, "out", amount=bytes_out)
    if reason in _BACKEND_REASONS:
        BACKEND_ERRORS.inc(listener, reason)
    elif reason in _LIMIT_REASONS:
        LIMITS_HIT.inc(listener, reason)
