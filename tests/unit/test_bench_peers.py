"""bench/peers.py's arithmetic: spreads over rounds, added latency against the same round's direct run, and the
ratio to the best peer in the right direction. Pure logic on made-up rounds; the bench itself runs the peers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = mod
    spec.loader.exec_module(mod)
    return mod


def _raw() -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {
        "https_small": {
            "sniproxy": [{"ok": True, "round": 0, "requests_per_server_cpu_s": 2000.0},
                         {"ok": True, "round": 1, "requests_per_server_cpu_s": 3000.0},
                         {"ok": True, "round": 2, "requests_per_server_cpu_s": 2500.0}],
            "haproxy": [{"ok": True, "round": 0, "requests_per_server_cpu_s": 9000.0},
                        {"ok": False, "round": 1, "requests_per_server_cpu_s": 1.0},     # failed round: left out
                        {"ok": True, "round": 2, "requests_per_server_cpu_s": 11000.0}],
            "nginx": [{"ok": True, "round": 0, "requests_per_server_cpu_s": 5000.0}],
        },
        "pingpong": {
            "direct": [{"ok": True, "round": 0, "p50_us": 20.0, "p99_us": 50.0},
                       {"ok": True, "round": 1, "p50_us": 40.0, "p99_us": 90.0}],
            "sniproxy": [{"ok": True, "round": 0, "p50_us": 170.0, "p99_us": 350.0, "server_cpu_us_per_rt": 95.0},
                         {"ok": True, "round": 1, "p50_us": 200.0, "p99_us": 390.0, "server_cpu_us_per_rt": 97.0}],
            "stunnel": [{"ok": True, "round": 0, "p50_us": 140.0, "p99_us": 250.0, "server_cpu_us_per_rt": 63.0},
                        {"ok": True, "round": 1, "p50_us": 160.0, "p99_us": 300.0, "server_cpu_us_per_rt": 61.0}],
            "nginx": [{"ok": True, "round": 0, "p50_us": 150.0, "p99_us": 240.0, "server_cpu_us_per_rt": 65.0},
                      {"ok": True, "round": 1, "p50_us": 170.0, "p99_us": 290.0, "server_cpu_us_per_rt": 66.0}],
        },
    }


def test_spread_over_rounds_leaves_failed_rounds_out(peers: ModuleType) -> None:
    s = peers.summarize(_raw())
    assert s["https_small"]["sniproxy"] == {"median": 2500.0, "min": 2000.0, "max": 3000.0, "n": 3}
    assert s["https_small"]["haproxy"] == {"median": 10000.0, "min": 9000.0, "max": 11000.0, "n": 2}
    assert "stunnel" not in s["https_small"]            # no HTTPS mode: the table shows '-'
    assert "direct" not in s["pp_cpu_us"]


def test_added_latency_is_against_the_same_rounds_direct_run(peers: ModuleType) -> None:
    s = peers.summarize(_raw())
    # sniproxy: 170-20 = 150 in round 0, 200-40 = 160 in round 1
    assert s["pp_p50_added"]["sniproxy"] == {"median": 155.0, "min": 150.0, "max": 160.0, "n": 2}
    assert s["pp_p99_added"]["stunnel"]["min"] == 200.0 and s["pp_p99_added"]["stunnel"]["max"] == 210.0


def test_ratio_to_the_best_peer_in_the_right_direction(peers: ModuleType) -> None:
    r = peers.ratios(peers.summarize(_raw()))
    assert r["https_small"] == {"best": "haproxy", "ratio": 0.25}      # higher is better: the highest peer
    assert r["pp_cpu_us"]["best"] == "stunnel"                          # lower is better: the lowest peer
    assert r["pp_cpu_us"]["ratio"] == pytest.approx(96.0 / 62.0, abs=1e-3)
    assert r["pp_p50_added"]["best"] == "stunnel"                       # added 120 vs nginx 130
    assert r["down"] == {"ratio": None}                                 # nobody measured: '-'


def test_markdown_shows_dash_and_direction(peers: ModuleType) -> None:
    raw = _raw()
    summary = peers.summarize(raw)
    res = {"date": "d", "command": "python bench/peers.py --quick", "runtime_s": 1.0,
           "machine": {"nproc": 2, "cpu": "x", "kernel": "k"}, "pinning": {}, "versions": {"haproxy": "2.6"},
           "params": {"rounds": 3}, "summary": summary, "ratios": peers.ratios(summary), "raw": raw,
           "blocks": {}, "checks": {"sniproxy": {"ok": True}}, "notes": []}
    md = peers.markdown(res)
    row = next(line for line in md.splitlines() if line.startswith("| HTTPS ~200 B"))
    assert "| 2,500 (2,000 to 3,000) |" in row and row.count("| - |") == 1     # stunnel
    assert "**0.25** (vs HAProxy; higher is better)" in row
    cpu = next(line for line in md.splitlines() if line.startswith("| same: server CPU"))
    assert "lower is better" in cpu and "vs stunnel" in cpu


def test_sniproxy_worker_variants_are_not_the_peer_to_beat(peers: ModuleType) -> None:
    # the workers rows run sniproxy-1u / sniproxy-auto in the HTTPS blocks; one faster than HAProxy crashed the table
    raw = _raw()
    raw["https_small"]["sniproxy-1u"] = [{"ok": True, "round": 0, "requests_per_server_cpu_s": 20000.0}]
    raw["https_small"]["sniproxy-auto"] = [{"ok": True, "round": 0, "requests_per_server_cpu_s": 30000.0}]
    assert peers.ratios(peers.summarize(raw))["https_small"] == {"best": "haproxy", "ratio": 0.25}
