"""sniproxy.observability.metrics in process: the contract's names and labels, and how an ended connection counts."""

from __future__ import annotations

import pytest

from sniproxy.errors import Reason
from sniproxy.observability import metrics as m


def test_names_and_labels_are_the_contract() -> None:
    got = {name: (metric.kind, metric.labels) for name, metric in m.REGISTRY.items()}
    assert got["sniproxy_connections_total"] == ("counter", ("listener", "protocol", "flow", "outcome", "reason"))
    assert got["sniproxy_connections_active"] == ("gauge", ("listener", "protocol"))
    assert got["sniproxy_handshake_duration_seconds"] == ("histogram", ("listener", "flow"))
    assert got["sniproxy_crl_fetch_total"] == ("counter", ("authority", "result"))
    assert got["sniproxy_reloads_total"] == ("counter", ("result",))
    # never a client address, an SNI, a card or a serial as a label
    for _, labels in got.values():
        assert not set(labels) & {"peer", "ip", "address", "sni", "cn", "serial", "card", "identity"}


def test_every_limit_and_backend_reason_is_classified() -> None:
    # too_many_commands is the pre-TLS dialog's refusal, not an admission limit
    limits = {r.value for r in Reason if r.value.startswith("too_many_")} - {"too_many_commands"}
    backend = {r.value for r in Reason if r.value.startswith("backend_")}
    assert limits == set(m._LIMIT_REASONS) and backend == set(m._BACKEND_REASONS)


def test_connection_ended_counts_each_metric() -> None:
    before = {n: dict(x.values) for n, x in m.REGISTRY.items()}
    try:
        m.ACTIVE.inc("t-imap", "imap")
        m.ACTIVE.inc("t-imap", "imap")
        m.connection_ended("t-imap", "imap", "2bis", "ok", "ok", 100, 40)
        m.connection_ended("t-imap", "imap", None, "refused", "too_many_from_ip", 0, 0)
        assert m.ACTIVE.get("t-imap", "imap") == 0
        assert m.CONNECTIONS.get("t-imap", "imap", "2bis", "ok", "ok") == 1
        assert m.CONNECTIONS.get("t-imap", "imap", "", "refused", "too_many_from_ip") == 1
        assert m.LIMITS_HIT.get("t-imap", "too_many_from_ip") == 1
        assert m.BYTES.get("t-imap", "2bis", "in") == 100 and m.BYTES.get("t-imap", "2bis", "out") == 40
        assert m.BYTES.get("t-imap", "", "in") == 0          # nothing added for a connection without bytes
        m.connection_ended("t-imap", "imap", "2bis", "refused", "backend_unavailable", 10, 10)
        assert m.BACKEND_ERRORS.get("t-imap", "backend_unavailable") == 1
        assert m.LIMITS_HIT.get("t-imap", "backend_unavailable") == 0
    finally:
        for n, vals in before.items():
            m.REGISTRY[n].values.clear()
            m.REGISTRY[n].values.update(vals)


def test_wrong_label_count_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="expected labels"):
        m.CONNECTIONS.inc("only-one")
    with pytest.raises(ValueError, match="defined twice"):
        m.counter("sniproxy_connections_total", "again")
