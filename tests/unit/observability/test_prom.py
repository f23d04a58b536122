"""sniproxy.observability.prom: one scrape sums the forked workers' metrics (prometheus_client's own parser).

Run in a child interpreter: installing the exposition switches prometheus_client's value class
for the whole process, which the rest of the unit tests must not inherit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sniproxy.observability.prom import StateCollector, make_run_dir

SCRIPT = r"""
import json, os, sys
from pathlib import Path
from sniproxy.observability import metrics as m
from sniproxy.observability import prom

d = Path(sys.argv[1])
prom.install(d)
m.RELOADS.inc("ok")                       # the supervisor's own count
pids = []
for worker in range(2):
    pid = os.fork()
    if pid == 0:
        for i in range(3 + worker):       # 3 in the first worker, 4 in the second
            m.ACTIVE.inc("imaps", "imaps")
            m.connection_ended("imaps", "imaps", "2bis", "ok", "ok", 100, 50)
        m.ACTIVE.inc("imaps", "imaps")    # one still open in each worker
        m.connection_ended("imaps", "imaps", None, "refused", "too_many_from_ip", 0, 20)
        m.ACTIVE.inc("imaps", "imaps")
        m.HANDSHAKES.observe("imaps", "2bis", value=0.003)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print(json.dumps(pids))
"""


def _run(tmp_path: Path) -> tuple[Path, list[int]]:
    d = tmp_path / "metrics"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(d)], capture_output=True, text=True, timeout=60,
                         env=env, check=True)
    return d, json.loads(out.stdout)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_one_scrape_sums_the_workers(tmp_path: Path) -> None:
    from sniproxy.observability import prom

    d, pids = _run(tmp_path)
    got = samples(prom.scrape(d).decode())
    ok = (("flow", "2bis"), ("listener", "imaps"), ("outcome", "ok"), ("protocol", "imaps"), ("reason", "ok"))
    assert got[("sniproxy_connections_total", ok)] == 7
    refused = (("flow", ""), ("listener", "imaps"), ("outcome", "refused"), ("protocol", "imaps"),
               ("reason", "too_many_from_ip"))
    assert got[("sniproxy_connections_total", refused)] == 2
    assert got[("sniproxy_limits_hit_total", (("limit", "too_many_from_ip"), ("listener", "imaps")))] == 2
    assert got[("sniproxy_client_bytes_total", (("direction", "in"), ("flow", "2bis"), ("listener", "imaps")))] == 700
    assert got[("sniproxy_client_bytes_total", (("direction", "out"), ("flow", ""), ("listener", "imaps")))] == 40
    assert got[("sniproxy_reloads_total", (("result", "ok"),))] == 1
    hs = (("flow", "2bis"), ("listener", "imaps"))
    assert got[("sniproxy_handshake_duration_seconds_count", hs)] == 2
    assert got[("sniproxy_handshake_duration_seconds_bucket", (*hs[:1], ("le", "0.005"), hs[1]))] == 2
    # one open connection in each worker, while both count as alive
    active = (("listener", "imaps"), ("protocol", "imaps"))
    assert got[("sniproxy_connections_active", active)] == 2
    # the supervisor saw the first worker exit: its open connection no longer counts, its counters do
    prom.mark_process_dead(pids[0], str(d))  # type: ignore[no-untyped-call]
    got = samples(prom.scrape(d).decode())
    assert got[("sniproxy_connections_active", active)] == 1
    assert got[("sniproxy_connections_total", ok)] == 7


def test_a_worker_file_still_being_created_is_not_an_error(tmp_path: Path) -> None:
    """A worker that has just started opens its file before it sizes it: a scrape in that instant sees 0
    bytes (prometheus_client's reader then fails on it, and the admin endpoint answered 500). Such a file
    holds no value yet, so the scrape reads the others and leaves it out."""
    from sniproxy.observability import prom

    d, _ = _run(tmp_path)
    for name in ("counter_4242.db", "histogram_4242.db", "gauge_livesum_4242.db", "gauge_all_4242.db"):
        (d / name).touch()
    got = samples(prom.scrape(d).decode())
    ok = (("flow", "2bis"), ("listener", "imaps"), ("outcome", "ok"), ("protocol", "imaps"), ("reason", "ok"))
    assert got[("sniproxy_connections_total", ok)] == 7
    assert got[("sniproxy_connections_active", (("listener", "imaps"), ("protocol", "imaps")))] == 2


def test_state_collector(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from sniproxy.demo.pki import build

    pki = build(tmp_path / "pki")
    flows = {"2bis": pki.servers["2bis"].chain, "gone": tmp_path / "missing.pem"}
    meta = SimpleNamespace(this_update=1000.0, next_update=5000.0)
    sources = [SimpleNamespace(url="http://crl/a.crl", authorities=("fort", "std"), meta=meta),
               SimpleNamespace(url="http://crl/b.crl", authorities=("fort",), meta=None)]
    reg = CollectorRegistry()
    reg.register(StateCollector(generation=lambda: 3, draining=lambda: False, ready=lambda: None,
                                certificates=lambda: flows, crl_sources=lambda: sources, clock=lambda: 1600.0))
    got = samples(generate_latest(reg).decode())
    assert got[("sniproxy_config_generation", ())] == 3 and got[("sniproxy_draining", ())] == 0
    assert ("sniproxy_ready", ()) not in got
    from cryptography import x509
    cert = x509.load_pem_x509_certificates(pki.servers["2bis"].chain.read_bytes())[0]
    assert got[("sniproxy_server_certificate_not_after_seconds", (("flow", "2bis"),))] == \
        cert.not_valid_after_utc.timestamp()
    assert not any(k[0].startswith("sniproxy_server_cert") and ("flow", "gone") in k[1] for k in got)
    src = (("authority", "std"), ("source", "http://crl/a.crl"))
    assert got[("sniproxy_crl_age_seconds", src)] == 600 and got[("sniproxy_crl_next_update_seconds", src)] == 5000
    assert not any(("source", "http://crl/b.crl") in k[1] for k in got)


def test_run_dir_cleans_runs_that_are_over(tmp_path: Path) -> None:
    old = tmp_path / "run" / "999999999"     # no such pid
    old.mkdir(parents=True)
    (old / "counter_999999999.db").write_bytes(b"x")
    run = make_run_dir(tmp_path)
    assert run == tmp_path / "run" / str(os.getpid()) and run.is_dir() and not old.exists()
    (run / "stale").write_bytes(b"x")
    assert not (make_run_dir(tmp_path) / "stale").exists()    # ours again (PID 1 after a restart)
