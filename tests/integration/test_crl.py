"""Revocation end to end: real CRL servers (HTTP, OpenLDAP slapd), the proxy, real TLS clients, Dovecot.

Each test publishes its own CRLs (signed with the test PKI's CA keys), starts ``sniproxy run`` with
its own state directory, and reads the proxy's events: a refusal must carry the intended reason
(``revoked``, ``crl_missing``, ``crl_stale``), and a CRL problem must be a ``crl_rejected`` event
with its reason while the last good CRL stays in force.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.crls import load_cert, load_key, make_crl, revoke
from sniproxy.demo.pki import TestPki
from tests.conftest import fail_or_skip, free_ports
from tests.integration.clients import tls_connect
from tests.integration.conftest import require_binary
from tests.integration.crlpeers import CrlHttpServer, Slapd, SlapdStartError, start_http_server, start_slapd
from tests.integration.peers import Dovecot
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration
FORT = "igc-sante-fort-pp"
StartProxy = Callable[[dict[str, Any]], ProxyProcess]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def http() -> Iterator[CrlHttpServer]:
    srv = start_http_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    require_binary("slapd")
    require_binary("slapadd")
    try:
        s = start_slapd(tmp_path_factory.mktemp("slapd"))
    except SlapdStartError as e:
        fail_or_skip(f"private slapd did not start: {e}")
    yield s
    s.stop()


class Fort:
    """The Fort authority set's CAs and keys, to publish CRLs as the CA would."""

    def __init__(self, pki: TestPki) -> None:
        files = pki.authorities[FORT]
        self.pki = pki
        self.inter, self.inter_key = load_cert(files.intermediates[0]), load_key(files.intermediate_keys[0])
        self.root, self.root_key = load_cert(files.roots[0]), load_key(files.root_keys[0])

    def inter_crl(self, *cards: str, number: int = 1, **kw: Any) -> bytes:
        return make_crl(self.inter, self.inter_key, revoked=[revoke(self.pki.cards[c].cert) for c in cards],
                        number=number, **kw)

    def root_crl(self, *, revoke_intermediate: bool = False, number: int = 1, **kw: Any) -> bytes:
        revoked = [(self.inter.serial_number, datetime.now(UTC) - timedelta(hours=2),
                    x509.ReasonFlags.ca_compromise)] if revoke_intermediate else []
        return make_crl(self.root, self.root_key, revoked=revoked, number=number, **kw)


@pytest.fixture(scope="module")
def fort(pki: TestPki) -> Fort:
    return Fort(pki)


def proxy_config(pki: TestPki, dovecot: Dovecot, state: Path, fort_crl: list[str] | dict[str, Any],
                 **top: Any) -> dict[str, Any]:
    """imaps in front of Dovecot; the Fort set checks CRLs, IGC CPS 2TER has none configured."""
    (port,) = free_ports(1)
    cfg = config_dict(pki, DemoPorts(imaps=port, imap_backend=f"127.0.0.1:{dovecot.imap_port}"))
    cfg["state_dir"] = str(state)
    cfg["authorities"][FORT]["crl"] = fort_crl
    cfg.update(top)
    return cfg


def port_of(cfg: dict[str, Any]) -> int:
    return int(cfg["listeners"][0]["bind"].rpartition(":")[2])


def attempt(proxy: ProxyProcess, port: int, card: str) -> dict[str, Any]:
    """Connect with ``card``; returns the proxy's connection event for it, with ``served`` set
    when the client read Dovecot's greeting through the proxy."""
    before = len(proxy.connection_events())
    served = False
    client_error = ""
    try:
        with tls_connect(port, proxy_pki(proxy), card, "frontimap.mssante.fr") as s:
            served = s.recv(64).startswith(b"* OK")
    except (ssl.SSLError, OSError) as exc:
        client_error = str(exc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = proxy.connection_events()
        # Served connections log at close; refused ones at the refusal.
        if len(events) > before:
            ev = dict(events[before])
            ev["served"], ev["client_error"] = served, client_error
            return ev
        time.sleep(0.05)
    raise AssertionError(f"no connection event for {card}: {proxy.log_text()[-3000:]}")


_PKI: dict[int, TestPki] = {}


def proxy_pki(proxy: ProxyProcess) -> TestPki:
    return _PKI[id(proxy)]


@pytest.fixture
def run_proxy(start_proxy: StartProxy, pki: TestPki) -> StartProxy:
    def go(cfg: dict[str, Any]) -> ProxyProcess:
        p = start_proxy(cfg)
        _PKI[id(p)] = pki
        return p
    return go


def ready_event(proxy: ProxyProcess) -> dict[str, Any]:
    ev = proxy.wait_log("ready")
    if not ev.get("crl_ready"):
        print(proxy.log_text())  # shown by pytest when the test then fails
    return ev


# ---------------------------------------------------------------------------- revocation over HTTP
def test_revoked_card_refused_with_reason_and_date(http: CrlHttpServer, fort: Fort, pki: TestPki,
                                                    dovecot: Dovecot, run_proxy: StartProxy, tmp_path: Path) -> None:
    inter = http.publish("t1/fort.crl", fort.inter_crl("fort"))
    root = http.publish("t1/fort-root.crl", fort.root_crl())
    cfg = proxy_config(pki, dovecot, tmp_path / "state", [inter, root])
    proxy = run_proxy(cfg)
    assert ready_event(proxy)["crl_ready"] is True
    ev = attempt(proxy, port_of(cfg), "fort")
    assert not ev["served"] and ev["reason"] == "revoked", ev
    # the client is told why (alert 44), not that the server broke (internal_error)
    assert "CERTIFICATE_REVOKED" in ev["client_error"], ev["client_error"]
    assert ev["revocation"]["reason"] == "keyCompromise" and ev["revocation"]["reason_code"] == 1
    expected = revoke(pki.cards["fort"].cert)
    assert ev["revocation"]["serial"] == f"{expected[0]:x}"
    assert "depth 0" in ev["detail"]
    ok = attempt(proxy, port_of(cfg), "fort-liberal")
    assert ok["served"] and ok["reason"] in ("ok", "client_closed"), ok
    # A set with no CRL configured is not checked (and the start said so).
    assert attempt(proxy, port_of(cfg), "cps-2ter")["served"]
    assert proxy.wait_log("revocation_not_checked")["authorities"] == ["igc-cps-2ter"]


def test_revoked_intermediate_refused_by_the_roots_crl(http: CrlHttpServer, fort: Fort, pki: TestPki,
                                                        dovecot: Dovecot, run_proxy: StartProxy,
                                                        tmp_path: Path) -> None:
    inter = http.publish("t2/fort.crl", fort.inter_crl())
    root = http.publish("t2/fort-root.crl", fort.root_crl(revoke_intermediate=True))
    cfg = proxy_config(pki, dovecot, tmp_path / "state", [inter, root])
    proxy = run_proxy(cfg)
    ev = attempt(proxy, port_of(cfg), "fort-liberal")
    assert not ev["served"] and ev["reason"] == "revoked", ev
    assert ev["revocation"]["reason"] == "cACompromise" and "depth 1" in ev["detail"]


def test_leaf_only_check_ignores_the_roots_crl(http: CrlHttpServer, fort: Fort, pki: TestPki,
                                               dovecot: Dovecot, run_proxy: StartProxy, tmp_path: Path) -> None:
    inter = http.publish("t2b/fort.crl", fort.inter_crl())
    cfg = proxy_config(pki, dovecot, tmp_path / "state", {"sources": [inter], "check": "leaf"})
    proxy = run_proxy(cfg)
    assert ready_event(proxy)["crl_ready"] is True
    assert attempt(proxy, port_of(cfg), "fort-liberal")["served"]


# ---------------------------------------------------------------------------- LDAP, delta CRLs
def test_delta_crl_over_ldap_revokes_before_the_next_base(slapd: Slapd, fort: Fort, pki: TestPki,
                                                          dovecot: Dovecot, run_proxy: StartProxy,
                                                          tmp_path: Path) -> None:
    slapd.put("Fort Inter T3", base=fort.inter_crl(number=10), delta=fort.inter_crl(number=11, delta_of=10))
    slapd.put("Fort Root T3", base=fort.root_crl())
    sources = [slapd.url("Fort Inter T3"), slapd.url("Fort Inter T3", "deltaRevocationList;binary"),
               slapd.url("Fort Root T3", "certificateRevocationList;binary")]
    cfg = proxy_config(pki, dovecot, tmp_path / "state", sources, crl={"refresh_max": 1, "retry_min": 1})
    proxy = run_proxy(cfg)
    assert ready_event(proxy)["crl_ready"] is True
    assert attempt(proxy, port_of(cfg), "fort-liberal")["served"]
    # The CA publishes a delta (same base 10) revoking the card; the base is unchanged.
    slapd.put("Fort Inter T3", base=fort.inter_crl(number=10),
              delta=fort.inter_crl("fort-liberal", number=12, delta_of=10))
    # the worker's own event (the supervisor fetches and logs first; the worker maps what it published)
    proxy.wait_log("crl_updated", lambda e: e.get("delta_of") == 10 and e.get("crl_number") == 12
                   and e.get("role") == "follower", timeout=15)
    ev = attempt(proxy, port_of(cfg), "fort-liberal")
    assert not ev["served"] and ev["reason"] == "revoked", ev
    # An entry that loses its attribute is refused with a reason; the CRLs in force stay.
    slapd.put("Fort Root T3")
    proxy.wait_log("crl_rejected", lambda e: e.get("reason") == "ldap_no_attribute", timeout=15)
    assert attempt(proxy, port_of(cfg), "fort")["served"]


def test_delta_for_another_base_is_refused(slapd: Slapd, fort: Fort, pki: TestPki, dovecot: Dovecot,
                                           run_proxy: StartProxy, tmp_path: Path) -> None:
    slapd.put("Fort Inter T4", base=fort.inter_crl(number=20), delta=fort.inter_crl("fort", number=31, delta_of=30))
    slapd.put("Fort Root T4", base=fort.root_crl())
    sources = [slapd.url("Fort Inter T4"), slapd.url("Fort Inter T4", "deltaRevocationList;binary"),
               slapd.url("Fort Root T4")]
    cfg = proxy_config(pki, dovecot, tmp_path / "state", sources)
    proxy = run_proxy(cfg)
    proxy.wait_log("crl_rejected", lambda e: e.get("reason") == "delta_base_mismatch")
    # The delta was not applied: the card it lists is still served on base 20.
    assert attempt(proxy, port_of(cfg), "fort")["served"]


# ---------------------------------------------------------------------------- cache, down servers
def test_server_down_at_start_cache_serves_no_cache_refuses(fort: Fort, pki: TestPki, dovecot: Dovecot,
                                                            run_proxy: StartProxy, tmp_path: Path) -> None:
    own = start_http_server()
    try:
        inter = own.publish("fort.crl", fort.inter_crl("fort"))
        root = own.publish("fort-root.crl", fort.root_crl())
        cfg = proxy_config(pki, dovecot, tmp_path / "cached", [inter, root])
        first = run_proxy(cfg)
        assert ready_event(first)["crl_ready"] is True
        first.stop()
    finally:
        own.stop()
    # Server down, cache on disk: the proxy starts ready and enforces the cached CRL.
    cfg2 = dict(cfg, listeners=[dict(cfg["listeners"][0], bind=f"127.0.0.1:{free_ports(1)[0]}")])
    second = run_proxy(cfg2)
    assert ready_event(second)["crl_ready"] is True
    assert attempt(second, port_of(cfg2), "fort-liberal")["served"]
    assert attempt(second, port_of(cfg2), "fort")["reason"] == "revoked"
    # Server down, no cache: not ready, that set's cards refused, other sets still served.
    cfg3 = proxy_config(pki, dovecot, tmp_path / "empty", [inter, root])
    third = run_proxy(cfg3)
    assert ready_event(third)["crl_ready"] is False
    third.wait_log("crl_not_ready")
    ev = attempt(third, port_of(cfg3), "fort-liberal")
    assert not ev["served"] and ev["reason"] == "crl_missing", ev
    assert attempt(third, port_of(cfg3), "cps-2ter")["served"]


def test_stale_crl_fail_closed_and_grace(fort: Fort, pki: TestPki, dovecot: Dovecot, run_proxy: StartProxy,
                                         tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    own = start_http_server()
    next_update = now + timedelta(seconds=8)
    try:
        inter = own.publish("fort.crl", fort.inter_crl(this_update=now - timedelta(minutes=1),
                                                       next_update=next_update))
        root = own.publish("fort-root.crl", fort.root_crl())
        closed_cfg = proxy_config(pki, dovecot, tmp_path / "closed", [inter, root])
        grace_cfg = proxy_config(pki, dovecot, tmp_path / "grace",
                                 {"sources": [inter, root], "stale": {"grace": "6s"}})
        closed, grace = run_proxy(closed_cfg), run_proxy(grace_cfg)
        for p in (closed, grace):
            assert ready_event(p)["crl_ready"] is True
    finally:
        own.stop()  # from now on no fresh CRL can be fetched
    assert attempt(closed, port_of(closed_cfg), "fort-liberal")["served"]
    _sleep_until(next_update + timedelta(seconds=1))
    ev = attempt(closed, port_of(closed_cfg), "fort-liberal")
    assert not ev["served"] and ev["reason"] == "crl_stale", ev
    ok = attempt(grace, port_of(grace_cfg), "fort-liberal")
    assert ok["served"] and ok["crl_grace"], ok
    assert grace.wait_log("crl_grace_accept")["authority"] == FORT
    _sleep_until(next_update + timedelta(seconds=6 + 1))
    ev = attempt(grace, port_of(grace_cfg), "fort-liberal")
    assert not ev["served"] and ev["reason"] == "crl_stale", ev
    closed.wait_log("crl_not_ready", timeout=35)


def _sleep_until(when: datetime) -> None:
    delay = (when - datetime.now(UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


# ---------------------------------------------------------------------------- refresh, bad CRLs
def test_bad_signature_and_older_crl_are_ignored(http: CrlHttpServer, fort: Fort, pki: TestPki,
                                                 dovecot: Dovecot, run_proxy: StartProxy, tmp_path: Path) -> None:
    inter = http.publish("t6/fort.crl", fort.inter_crl("fort", number=5))
    root = http.publish("t6/fort-root.crl", fort.root_crl())
    cfg = proxy_config(pki, dovecot, tmp_path / "state", [inter, root], crl={"refresh_max": 1, "retry_min": 1})
    proxy = run_proxy(cfg)
    assert attempt(proxy, port_of(cfg), "fort")["reason"] == "revoked"
    forged_key = rsa.generate_private_key(65537, 2048)
    http.publish("t6/fort.crl", make_crl(fort.inter, forged_key, number=6))
    proxy.wait_log("crl_rejected", lambda e: e.get("reason") == "bad_signature", timeout=15)
    assert attempt(proxy, port_of(cfg), "fort")["reason"] == "revoked"
    http.publish("t6/fort.crl", fort.inter_crl(number=4))
    proxy.wait_log("crl_rejected", lambda e: e.get("reason") == "rollback", timeout=15)
    assert attempt(proxy, port_of(cfg), "fort")["reason"] == "revoked"


def test_replaced_crl_picked_up_without_dropping_connections(http: CrlHttpServer, fort: Fort, pki: TestPki,
                                                             dovecot: Dovecot, run_proxy: StartProxy,
                                                             tmp_path: Path) -> None:
    inter = http.publish("t7/fort.crl", fort.inter_crl(number=1))
    root = http.publish("t7/fort-root.crl", fort.root_crl())
    cfg = proxy_config(pki, dovecot, tmp_path / "state", [inter, root], crl={"refresh_max": 1, "retry_min": 1})
    proxy = run_proxy(cfg)
    with tls_connect(port_of(cfg), pki, "fort-liberal", "frontimap.mssante.fr") as held:
        assert held.recv(64).startswith(b"* OK")
        http.publish("t7/fort.crl", fort.inter_crl("fort-liberal", number=2))
        proxy.wait_log("crl_updated", lambda e: e.get("crl_number") == 2 and e.get("url") == inter
                       and e.get("role") == "follower", timeout=15)
        # Conditional requests: the unchanged root CRL is not downloaded again.
        # (each source has its own schedule: wait for the root's next fetch, bounded)
        deadline = time.monotonic() + 10
        while not any(h["if_none_match"] for h in http.hits("t7/fort-root.crl")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(h["if_none_match"] for h in http.hits("t7/fort-root.crl"))
        ev = attempt(proxy, port_of(cfg), "fort-liberal")
        assert not ev["served"] and ev["reason"] == "revoked", ev
        # The session opened before the new CRL goes on (no restart, no drop).
        held.sendall(b"a1 NOOP\r\n")
        reply = b""
        while b"a1 " not in reply:
            chunk = held.recv(4096)
            assert chunk, "connection dropped by the CRL swap"
            reply += chunk
        assert b"a1 OK" in reply


@pytest.mark.parametrize(("mode", "reason"), [
    ("html", "not_a_crl"), ("error500", "http_status"), ("truncate", "unreachable"),
    ("oversize", "too_large"), ("trickle", "timeout"),
])
def test_bad_http_answers_keep_the_last_good_crl(mode: str, reason: str, http: CrlHttpServer, fort: Fort,
                                                 pki: TestPki, dovecot: Dovecot, run_proxy: StartProxy,
                                                 tmp_path: Path) -> None:
    good = fort.inter_crl("fort", number=7)
    inter = http.publish(f"t8-{mode}/fort.crl", good)
    root = http.publish(f"t8-{mode}/fort-root.crl", fort.root_crl())
    cfg = proxy_config(pki, dovecot, tmp_path / "state", [inter, root],
                       crl={"refresh_max": 1, "retry_min": 1, "timeout": 2, "max_bytes": 8192})
    proxy = run_proxy(cfg)
    proxy.wait_log("crl_ready")
    http.publish(f"t8-{mode}/fort.crl", fort.inter_crl(number=8) if mode in ("oversize", "trickle", "truncate")
                 else good, mode=mode)
    if mode == "trickle":
        time.sleep(0.5)  # the fetch is under way: the loop still serves handshakes meanwhile
        assert attempt(proxy, port_of(cfg), "fort-liberal")["served"]
    proxy.wait_log("crl_rejected", lambda e: e.get("reason") == reason and e.get("url") == inter, timeout=15)
    assert attempt(proxy, port_of(cfg), "fort")["reason"] == "revoked"
    assert attempt(proxy, port_of(cfg), "fort-liberal")["served"]
    assert proxy.proc.poll() is None
    assert "Traceback" not in proxy.log_text()


# ---------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sniproxy", *args], capture_output=True, text=True, timeout=60)


def test_cli_crl_fetch_status_and_verify(http: CrlHttpServer, fort: Fort, pki: TestPki, dovecot: Dovecot,
                                         tmp_path: Path) -> None:
    inter = http.publish("t9/fort.crl", fort.inter_crl("fort", number=3))
    root = http.publish("t9/fort-root.crl", fort.root_crl())
    cfg = proxy_config(pki, dovecot, tmp_path / "state", [inter, root])
    path = write_config(cfg, tmp_path / "cfg.yaml")
    status = _cli("crl", "status", "-c", str(path))
    assert status.returncode == 1 and "not ready" in status.stderr
    fetched = _cli("crl", "fetch", "-c", str(path), "--json")
    assert fetched.returncode == 0, fetched.stderr
    status = _cli("crl", "status", "-c", str(path), "--json")
    assert status.returncode == 0, status.stderr
    import json
    rows = {r["url"]: r for r in json.loads(status.stdout)}
    assert rows[inter]["entries"] == 1 and rows[inter]["crl_number"] == 3 and rows[inter]["last_result"] == "updated"
    verdict = _cli("verify", "-c", str(path), str(pki.cards["fort"].chain))
    assert verdict.returncode == 1 and "REFUSED reason=revoked" in verdict.stdout and "keyCompromise" in verdict.stdout
    verdict = _cli("verify", "-c", str(path), str(pki.cards["fort-liberal"].chain))
    assert verdict.returncode == 0 and verdict.stdout.count("ACCEPTED") == 2, verdict.stdout
    http.publish("t9/fort.crl", b"", mode="error500")
    failed = _cli("crl", "fetch", "-c", str(path))
    assert failed.returncode == 1 and "http_status" in failed.stderr
