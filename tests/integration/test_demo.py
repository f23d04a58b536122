"""The README's first command: ``sniproxy demo`` runs real clients through the proxy on embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_ports

pytestmark = pytest.mark.integration

EXPECTED = {
    "SMTP, IGC Santé name, Fort card, sends a mail": "ok",
    "IMAP, no SNI, IGC Santé Fort card": "ok",
    "IMAP, legacy name, IGC CPS 2TER card": "ok",
    "IMAP, IGC Santé name, IGC CPS 2TER card": "ok",
    "IMAP, Standard CPE card (Standard off)": "unknown_ca",
    "IMAP, TEST chain card on production": "test_chain",
    "IMAP, expired card": "expired",
    "IMAP, Fort card revoked in its CRL": "revoked",
    "IMAP, no card": "no_client_cert",
    "IMAP, command pipelined after STARTTLS": "starttls_injection",
}


def _consecutive_free_ports(n: int) -> int:
    for _ in range(50):
        base = free_ports(1)[0]
        if base + n < 65535 and _all_free(base, n):
            return base
    raise RuntimeError("no run of free ports")


def _all_free(base: int, n: int) -> bool:
    import socket

    for port in range(base, base + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_demo_runs_and_every_scenario_ends_as_expected(tmp_path: Path) -> None:
    """As the README runs it: the default (relative) state directory, from some working directory."""
    base = _consecutive_free_ports(4)
    repo = Path(__file__).resolve().parents[2]
    # the README's first command is scripts/demo.sh; it uses the interpreter of this test run's virtualenv
    env = {**os.environ, "SNIPROXY_VENV": sys.prefix,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([str(repo / "scripts" / "demo.sh"), "--no-serve", "--base-port", str(base)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert (tmp_path / "state" / "demo" / "demo.yaml").is_file()
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split("  ")[1].strip(): line for line in r.stdout.splitlines() if line[:1].isdigit()}
    assert set(rows) == set(EXPECTED), r.stdout
    for title, reason in EXPECTED.items():
        assert f"  {reason}  " in rows[title], rows[title]
    assert "leaked" not in r.stdout
    assert "frontimap-igcsante.mssante.fr" in rows["IMAP, IGC Santé name, IGC CPS 2TER card"]
    assert "Traceback" not in r.stderr
