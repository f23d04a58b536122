"""The soak (issue 17) in its 3-minute form: ``python -m soak --minutes 3`` in a subprocess, then its verdicts.

Real peers throughout (Dovecot, Postfix, slapd, an HTTP backend, a CRL HTTP server, ``sniproxy run`` with
two workers); under ``CI=true`` a peer that cannot start fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fail_or_skip
from tests.integration.conftest import require_binary

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_three_minute_soak_loses_nothing_and_explains_every_refusal(tmp_path: Path) -> None:
    for binary in ("dovecot", "doveadm", "postfix", "postconf", "slapd", "slapadd"):
        require_binary(binary)
    out = tmp_path / "soak.md"
    try:
        run = subprocess.run([sys.executable, "-m", "soak", "--minutes", "3", "--out", str(out), "--seed", "17"],
                             cwd=ROOT, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the soak overran its 7 minutes: {exc.stdout!s:.2000} {exc.stderr!s:.2000}")
    verdicts_file = tmp_path / "soak-data" / "verdicts.json"
    assert verdicts_file.exists(), f"no verdicts: exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    v = json.loads(verdicts_file.read_text())
    report = out.read_text()
    if v["aborted"] and str(v["aborted"]).startswith("stack:"):
        fail_or_skip(f"a soak peer could not start: {v['aborted']}")
    assert not v["aborted"], v["aborted"]
    assert not v["crash"], v["crash"]
    assert v["unexplained_refusals"] == [], report
    assert v["internal_errors"] == [] and v["tracebacks"] == 0, report
    assert v["lost"]["violations"] == {}, report
    assert v["revocation"]["violations"] == [], report
    # the run did what it says: traffic of every kind, every fault, the delta in force in both workers
    lost = v["lost"]
    assert lost["mail"]["submitted"] >= 20 and lost["mail"]["found"] == lost["mail"]["submitted"], lost["mail"]
    assert lost["https"]["requests"] >= 20 and lost["imap"]["sessions"] >= 20, lost
    rv = v["revocation"]
    assert len(rv["workers"]) == 2 and len(rv["delta_in_force"]) == 2, rv
    assert {r["fault"] for r in rv["crl_faults"]} >= {"crl_down", "crl_slow", "crl_truncated", "crl_bad_signature",
                                                     "crl_rollback", "crl_200mb", "slapd_down"}, rv["crl_faults"]
    assert v["refused_by_reason"].get("revoked", 0) >= 2 and v["refused_by_reason"].get("backend_unavailable", 0) >= 1
    assert run.returncode == 0, run.stdout[-2000:]
    # the plots, as PNG (headless Chromium, a test peer) with their SVG sources, linked from the report
    require_binary("chromium")
    for name in ("resources", "latency"):
        png = tmp_path / f"soak-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert (tmp_path / f"soak-{name}.svg").exists()
        assert f"]({png.name})" in report
