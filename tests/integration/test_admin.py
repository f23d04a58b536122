"""The admin endpoint end to end: a real ``sniproxy run`` with ``workers: 2``, real TLS clients, Dovecot,
a real CRL HTTP server, and ``http.client`` on the admin port. /metrics is parsed with prometheus_client's
own text parser; its counters must equal the connections made, summed over both workers."""

from __future__ import annotations

import http.client
import itertools
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sniproxy.demo.conf import DemoPorts, config_dict
from sniproxy.demo.pki import TestPki
from tests.conftest import free_ports
from tests.integration.clients import tls_connect
from tests.integration.crlpeers import CrlHttpServer, start_http_server
from tests.integration.peers import Dovecot
from tests.integration.proxyproc import ProxyProcess
from tests.integration.test_crl import FORT, Fort, fort  # noqa: F401 - a fixture, shared with test_crl

pytestmark = pytest.mark.integration
StartProxy = Callable[[dict[str, Any]], ProxyProcess]
SNI = "frontimap.mssante.fr"


@pytest.fixture(scope="module")
def crl_http() -> Iterator[CrlHttpServer]:
    srv = start_http_server()
    yield srv
    srv.stop()


def make_config(pki: TestPki, dovecot: Dovecot, state: Path, fort_crl: Any = None,
                **top: Any) -> tuple[dict[str, Any], int, int]:
    """imaps in front of Dovecot with workers: 2 and the admin endpoint; returns (config, imaps port, admin port)."""
    port, admin = free_ports(2)
    cfg = config_dict(pki, DemoPorts(imaps=port, imap_backend=f"127.0.0.1:{dovecot.imap_port}"))
    cfg["state_dir"] = str(state)
    cfg["workers"] = 2
    cfg["admin"] = {"bind": f"127.0.0.1:{admin}"}
    if fort_crl is not None:
        cfg["authorities"][FORT]["crl"] = fort_crl
    cfg.update(top)
    return cfg, port, admin


def admin(port: int, method: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_admin(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if admin(port, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("admin endpoint did not answer")
        time.sleep(0.1)


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, body = admin(port, "GET", "/metrics")
    assert status == 200, body
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def connect(port: int, pki: TestPki, card: str) -> bool:
    """One client connection; True when Dovecot's greeting came through the proxy."""
    try:
        with tls_connect(port, pki, card, SNI) as s:
            return s.recv(64).startswith(b"* OK")
    except (ssl.SSLError, OSError):
        return False


def wait_until(pred: Callable[[], bool], timeout: float, what: str, why: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {why()}")
        time.sleep(0.2)


def test_metrics_sum_both_workers_and_admin_routes(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                                   tmp_path: Path) -> None:
    cfg, port, aport = make_config(pki, dovecot, tmp_path / "state")
    proxy = start_proxy(cfg)
    wait_admin(aport)
    wait_until(lambda: admin(aport, "GET", "/readyz")[0] == 200, 15, "/readyz 200")
    # 12 served (two card families), 5 refused (a card of an unknown CA); each on a new connection,
    # so SO_REUSEPORT spreads them over both workers.
    served = [connect(port, pki, card) for card in ["cps-2ter", "fort-liberal"] * 6]
    refused = [connect(port, pki, "unknown-ca") for _ in range(5)]
    assert all(served) and not any(refused)
    wait_until(lambda: len(proxy.connection_events()) >= 17, 15, "17 connection events")
    m = scrape(aport)
    assert total(m, "sniproxy_connections_total") == 17
    assert total(m, "sniproxy_connections_total", outcome="refused") == 5
    assert total(m, "sniproxy_connections_total", outcome="refused", reason="unknown_ca", listener="imaps",
                 protocol="imaps") == 5
    assert total(m, "sniproxy_connections_total", flow="2bis") == 17
    assert total(m, "sniproxy_handshake_duration_seconds_count") == 12
    assert total(m, "sniproxy_connections_active") == 0
    assert total(m, "sniproxy_client_bytes_total", direction="in") > 0
    assert total(m, "sniproxy_config_generation") == 1 and total(m, "sniproxy_ready") == 1
    not_after = total(m, "sniproxy_server_certificate_not_after_seconds", flow="2bis")
    assert not_after > time.time() + 86400
    # both workers served: the events carry no pid, but each worker's metrics file does
    run = tmp_path / "state" / "run"
    files = [f.name for d in run.iterdir() for f in (d / "metrics").glob("counter_*.db")]
    assert len(files) >= 2, files
    # labels stay bounded: no address, SNI or card name anywhere in the exposition
    _, body = admin(aport, "GET", "/metrics")
    assert "127.0.0.1" not in body and SNI not in body
    # routes
    assert admin(aport, "GET", "/healthz") == (200, "ok\n")
    assert admin(aport, "GET", "/nope")[0] == 404
    assert admin(aport, "GET", "/reload")[0] == 405
    status, body = admin(aport, "POST", "/reload")
    assert status == 200 and json.loads(body) == {"ok": True, "generation": 2, "errors": []}
    m = scrape(aport)
    assert total(m, "sniproxy_reloads_total", result="ok") == 1
    assert total(m, "sniproxy_config_generation") == 2
    # counters survive the reload (workers keep running)
    assert total(m, "sniproxy_connections_total") == 17
    # an invalid config is refused with sniproxy check's file:line errors; generation 2 keeps serving
    text = proxy.config.read_text()
    proxy.config.write_text(text.replace("profile: production", "profile: prod"))
    status, body = admin(aport, "POST", "/reload")
    answer = json.loads(body)
    assert status == 422 and answer["ok"] is False and answer["generation"] == 2, body
    assert answer["errors"] and answer["errors"][0].startswith(f"{proxy.config}:"), answer
    assert "profile" in answer["errors"][0]
    proxy.config.write_text(text)
    m = scrape(aport)
    assert total(m, "sniproxy_reloads_total", result="failed") == 1
    assert total(m, "sniproxy_config_generation") == 2
    assert connect(port, pki, "fort-liberal")
    # the admin port is plain HTTP, never TLS, and a client port never answers HTTP
    with pytest.raises((http.client.HTTPException, OSError)):
        admin(port, "GET", "/healthz")
    assert admin(aport, "POST", "/drain")[0] == 202
    status, body = admin(aport, "GET", "/readyz")
    assert status == 503 and "draining" in body
    assert proxy.proc.wait(timeout=40) == 0
    assert not run.exists() or not any(run.iterdir())       # the run's metric files are removed at exit


def test_admin_port_busy_stops_the_start_with_its_line(pki: TestPki, dovecot: Dovecot, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from sniproxy.demo.conf import write_config

    cfg, _, aport = make_config(pki, dovecot, tmp_path / "state")
    path = write_config(cfg, tmp_path / "busy.yaml")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", aport))
        holder.listen(1)
        r = subprocess.run([sys.executable, "-m", "sniproxy", "run", "-c", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if f"127.0.0.1:{aport}" in t)
    assert f"{path}:{line}: admin.bind: cannot listen on 127.0.0.1:{aport} (admin endpoint)" in r.stderr, r.stderr
    assert '"event": "serving"' not in r.stderr


def test_readyz_false_while_a_required_crl_is_stale(crl_http: CrlHttpServer, fort: Fort, pki: TestPki,  # noqa: F811
                                                    dovecot: Dovecot, start_proxy: StartProxy,
                                                    tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    next_update = now + timedelta(seconds=15)
    inter = crl_http.publish("adm1/fort.crl", fort.inter_crl(this_update=now - timedelta(minutes=5),
                                                         next_update=next_update))
    root = crl_http.publish("adm1/fort-root.crl", fort.root_crl())
    cfg, _, aport = make_config(pki, dovecot, tmp_path / "state", [inter, root],
                                crl={"refresh_max": 1, "retry_min": 1})
    start_proxy(cfg)
    wait_admin(aport)
    wait_until(lambda: admin(aport, "GET", "/readyz")[0] == 200, 15, "/readyz 200 with fresh CRLs",
               lambda: admin(aport, "GET", "/readyz"))
    m = scrape(aport)
    src = {"authority": FORT, "source": inter}
    assert total(m, "sniproxy_crl_next_update_seconds", **src) == next_update.timestamp()
    assert 0 < total(m, "sniproxy_crl_age_seconds", **src) < 3600
    # nextUpdate passes and the server still has nothing newer: the pod must leave the Service
    wait_until(lambda: admin(aport, "GET", "/readyz")[0] == 503, 30, "/readyz 503 once the CRL is stale")
    _, body = admin(aport, "GET", "/readyz")
    assert "crl: " + FORT in body and "stale since" in body, body
    assert total(scrape(aport), "sniproxy_ready") == 0
    # the CA publishes a fresh CRL: the fetcher picks it up and the pod is ready again
    crl_http.publish("adm1/fort.crl", fort.inter_crl(number=2))
    wait_until(lambda: admin(aport, "GET", "/readyz")[0] == 200, 20, "/readyz 200 after a fresh CRL")


def test_one_download_per_crl_per_refresh_with_two_workers(crl_http: CrlHttpServer, fort: Fort,  # noqa: F811
                                                          pki: TestPki, dovecot: Dovecot,
                                                          start_proxy: StartProxy, tmp_path: Path) -> None:
    inter = crl_http.publish("adm2/fort.crl", fort.inter_crl())
    root = crl_http.publish("adm2/fort-root.crl", fort.root_crl())
    cfg, port, aport = make_config(pki, dovecot, tmp_path / "state", [inter, root],
                                   crl={"refresh_max": 2, "retry_min": 1})
    began = time.monotonic()
    proxy = start_proxy(cfg)
    wait_admin(aport)
    wait_until(lambda: admin(aport, "GET", "/readyz")[0] == 200, 15, "/readyz 200")
    time.sleep(7)
    elapsed = time.monotonic() - began
    # One fetcher refreshes each source every 2 s (+-10 % jitter): consecutive requests for a CRL are
    # at least 1.8 s apart, from the first download on. N fetchers (one per worker) would download
    # each CRL N times at start, within milliseconds, and then N times per period.
    for path in ("adm2/fort.crl", "adm2/fort-root.crl"):
        times = [h["at"] for h in crl_http.hits(path)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 3 and min(gaps) >= 1.7, (path, gaps)
        assert len(times) <= elapsed / 1.8 + 2, (path, len(times), elapsed)
    # a CRL revoking a card reaches every worker through the fetcher: every new connection is refused
    crl_http.publish("adm2/fort.crl", fort.inter_crl("fort-liberal", number=2))
    # logged by the fetcher, then by each worker's follower once it mapped it
    wait_until(lambda: sum(1 for e in proxy._snapshot_events() if e.get("event") == "crl_updated"
                           and e.get("crl_number") == 2 and e.get("role") == "follower") >= 2, 10,
               "both workers on the new CRL")
    before = len(proxy.connection_events())
    assert not any(connect(port, pki, "fort-liberal") for _ in range(8))
    wait_until(lambda: len(proxy.connection_events()) >= before + 8, 10, "8 events")
    reasons = [e["reason"] for e in proxy.connection_events()[before:]]
    assert reasons == ["revoked"] * 8, reasons
    assert len(proxy.log_text().split('"crl_updated"')) - 1 >= 1


def test_a_killed_workers_open_connections_leave_the_active_gauge(pki: TestPki, dovecot: Dovecot,
                                                                 start_proxy: StartProxy, tmp_path: Path) -> None:
    import os
    import signal

    from tests.integration.lifecycle_kit import worker_pids

    cfg, port, aport = make_config(pki, dovecot, tmp_path / "state")
    proxy = start_proxy(cfg)
    old = worker_pids(proxy, 2)
    wait_admin(aport)
    held = [tls_connect(port, pki, "fort-liberal", SNI) for _ in range(4)]
    try:
        for s in held:
            assert s.recv(64).startswith(b"* OK")
        wait_until(lambda: total(scrape(aport), "sniproxy_connections_active") == 4, 10, "4 active")
        for pid in old:
            os.kill(pid, signal.SIGKILL)      # the workers this test's proxy started, by pid
        # the supervisor restarts them and forgets the dead ones' open connections
        wait_until(lambda: len([e for e in proxy._snapshot_events() if e.get("event") == "ready"]) >= 4, 30,
                   "two new workers")
        wait_until(lambda: total(scrape(aport), "sniproxy_connections_active") == 0, 10, "0 active",
                   lambda: scrape(aport).get("sniproxy_connections_active"))
        wait_until(lambda: admin(aport, "GET", "/readyz")[0] == 200, 20, "ready again")
        assert connect(port, pki, "cps-2ter")
        # counters of the dead workers still count (their 4 connections ended without an event: not counted)
        wait_until(lambda: total(scrape(aport), "sniproxy_connections_total") >= 1, 10, "the new connection ended")
        m = scrape(aport)
        assert total(m, "sniproxy_connections_total") == 1
        assert total(m, "sniproxy_connections_active") == 0
    finally:
        for s in held:
            s.close()


def test_live_migration_page_on_the_admin_endpoint(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                                   tmp_path: Path) -> None:
    """GET /migration on the supervisor's admin port: the workers' dumps as one page (the merge itself is
    unit-tested in test_report_live; SO_REUSEPORT decides which worker gets which connection)."""
    from tests.integration.test_report import FORT as FORT_ID
    from tests.integration.test_report import TWO_TER

    cfg, port, aport = make_config(pki, dovecot, tmp_path / "state")
    start_proxy(cfg)
    wait_admin(aport)
    # 2TER cards on the legacy name (blocks the cutover), Fort cards without SNI (blocks it too); new
    # connections each, so both workers see some
    assert all(connect(port, pki, "cps-2ter") for _ in range(4))
    with_no_sni = []
    for _ in range(4):
        with tls_connect(port, pki, "fort", None) as s:
            with_no_sni.append(s.recv(64).startswith(b"* OK"))
    assert all(with_no_sni)

    def page() -> str:
        status, body = admin(aport, "GET", "/migration")
        assert status == 200, body
        return body

    # dumps are written every few seconds by each worker
    wait_until(lambda: "Blocks the cutover (2)" in page(), 30, "both blockers on /migration", page)
    body = page()
    assert TWO_TER in body and FORT_ID in body
    assert "<svg" in body and "<script" not in body
    assert "http://" not in body.replace("http://www.w3.org/2000/svg", "")   # nothing fetched from elsewhere
    assert re.search(r"Live view</b>: the connections this proxy.{0,12}s [12] worker\(s\) handled", body)
