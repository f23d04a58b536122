"""Scheduled cutovers with real clients (issue 13): applied by themselves at their instant in every
worker (``workers: 2``), seen by ``openssl s_client``; the rollback entry restores; removing an entry
by a reload before its instant cancels it; a past entry is in force at start."""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from tests.integration.lifecycle_kit import (
    IMAP_2BIS,
    IMAP_SANTE,
    lifecycle_config,
    reload_and_wait,
    rewrite,
    served_cn,
    wait_until,
    worker_pids,
)
from tests.integration.peers import Dovecot
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration
StartProxy = Callable[[dict[str, Any]], ProxyProcess]
PROBES = 6      # s_client connections per check: SO_REUSEPORT spreads them over both workers


def _switch(pki: TestPki, at: dt.datetime, server: str) -> dict[str, Any]:
    return {"at": at.isoformat(), "flow": "2bis", "certificate": str(pki.servers[server].chain),
            "key": str(pki.servers[server].key)}


def _events(proxy: ProxyProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in list(proxy.events) if e.get("event") == name]


def _all_see(pki: TestPki, port: int, cn: str, sni: str | None = None) -> None:
    seen = [served_cn(pki, port, starttls=None, sni=sni) for _ in range(PROBES)]
    assert seen == [cn] * PROBES, seen


def _every_worker_on(proxy: ProxyProcess, pids: list[int], generation: int) -> None:
    wait_until(lambda: {e["pid"] for e in _events(proxy, "snapshot") if e["generation"] == generation} >= set(pids),
               5, f"every worker on generation {generation}")


def test_cutover_and_rollback_switch_the_certificate_at_their_instants(pki: TestPki, dovecot: Dovecot,
                                                                       start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    pids = worker_pids(proxy, 2)
    assert ports.imaps is not None
    t0 = dt.datetime.now(dt.UTC)
    at, back = t0 + dt.timedelta(seconds=4), t0 + dt.timedelta(seconds=8)
    scheduled = copy.deepcopy(cfg)
    scheduled["cutover"] = [_switch(pki, at, "igcsante"), _switch(pki, back, "2bis")]
    rewrite(proxy, scheduled)
    assert reload_and_wait(proxy)["generation"] == 2
    _all_see(pki, ports.imaps, IMAP_2BIS)                      # before the instant: unchanged
    ev = proxy.wait_log("cutover_applied", timeout=15)
    applied_at = time.time()
    assert applied_at >= at.timestamp() and applied_at - at.timestamp() < 3, applied_at - at.timestamp()
    assert ev["generation"] == 3 and "flow 2bis certificate" in ev["change"] and ev["late"] is False
    _every_worker_on(proxy, pids, 3)
    _all_see(pki, ports.imaps, IMAP_SANTE)
    proxy.wait_log("cutover_applied", lambda e: e["generation"] == 4, timeout=15)
    assert time.time() >= back.timestamp()
    _every_worker_on(proxy, pids, 4)
    _all_see(pki, ports.imaps, IMAP_2BIS)                      # the rollback entry restored it


def test_no_sni_default_flow_cutover(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    pids = worker_pids(proxy, 2)
    assert ports.imaps is not None
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    scheduled = copy.deepcopy(cfg)
    scheduled["cutover"] = [{"at": at.isoformat(), "listener": "imaps", "default_flow": "igcsante"}]
    rewrite(proxy, scheduled)
    reload_and_wait(proxy)
    _all_see(pki, ports.imaps, IMAP_2BIS)
    assert time.time() < at.timestamp(), "too slow to check before the instant"
    ev = proxy.wait_log("cutover_applied", timeout=15)
    assert time.time() >= at.timestamp() and ev["change"] == "listener imaps default_flow -> igcsante"
    _every_worker_on(proxy, pids, ev["generation"])
    _all_see(pki, ports.imaps, IMAP_SANTE)                       # no SNI: the new default flow
    _all_see(pki, ports.imaps, IMAP_2BIS, sni=IMAP_2BIS)         # the 2BIS name still routes to 2bis
    assert ports.imap is not None and served_cn(pki, ports.imap) == IMAP_2BIS   # other listener unchanged


def test_entry_removed_before_its_instant_is_cancelled(pki: TestPki, dovecot: Dovecot,
                                                       start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imaps is not None
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    scheduled = copy.deepcopy(cfg)
    scheduled["cutover"] = [_switch(pki, at, "igcsante")]
    rewrite(proxy, scheduled)
    reload_and_wait(proxy)
    rewrite(proxy, cfg)                         # the operator changes their mind
    reload_and_wait(proxy)
    time.sleep(max(0.0, at.timestamp() - time.time()) + 1.5)
    assert _events(proxy, "cutover_applied") == []
    _all_see(pki, ports.imaps, IMAP_2BIS)


def test_past_entry_is_in_force_at_start(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    cfg["cutover"] = [_switch(pki, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), "igcsante")]
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    ev = proxy.wait_log("cutover_applied")
    assert ev["late"] is True and ev["generation"] == 1
    assert ports.imaps is not None
    _all_see(pki, ports.imaps, IMAP_SANTE)


def test_cutover_whose_files_vanished_keeps_the_config_in_force(pki: TestPki, dovecot: Dovecot, tmp_path: Any,
                                                                start_proxy: StartProxy) -> None:
    import shutil

    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imaps is not None
    chain, key = tmp_path / "next-chain.pem", tmp_path / "next-key.pem"
    shutil.copy(pki.servers["igcsante"].chain, chain)
    shutil.copy(pki.servers["igcsante"].key, key)
    key.chmod(0o600)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    scheduled = copy.deepcopy(cfg)
    scheduled["cutover"] = [{"at": at.isoformat(), "flow": "2bis", "certificate": str(chain), "key": str(key)}]
    rewrite(proxy, scheduled)
    assert reload_and_wait(proxy)["generation"] == 2
    chain.unlink()                              # gone before the instant
    ev = proxy.wait_log("cutover_failed", timeout=15)
    assert any(str(chain) in e for e in ev["errors"]), ev
    assert ev["generation"] == 2 and _events(proxy, "cutover_applied") == []
    _all_see(pki, ports.imaps, IMAP_2BIS)
