"""Acceptance: ``sslyze`` against the proxy's IMAP STARTTLS, SMTP STARTTLS and implicit-TLS listeners.

Asserts the TLS policy as an outside scanner sees it (issue 6, ANSSI TLS guide): only TLS 1.2 and 1.3
are accepted; every accepted suite is ECDHE with an AEAD cipher (AES-GCM or ChaCha20-Poly1305; TLS 1.3
suites are all (EC)DHE, and the groups offered are checked to be elliptic); and a client certificate
is reported as required.

sslyze pins ``cryptography<47`` while sniproxy runs on a newer one, so it lives in its own virtualenv
(``scripts/install-sslyze.sh`` makes ``.venv-sslyze``) and is run as a command: ``$SSLYZE``, else
``sslyze`` on PATH, else ``.venv-sslyze/bin/sslyze``. Missing, the test fails under ``CI=true`` and
skips otherwise. The scan is made without a client certificate, so no connection reaches a backend
(the backends are closed ports) and sslyze can see that a certificate is required.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.pki import TestPki
from tests.conftest import fail_or_skip, free_ports
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Listener -> (sslyze --starttls value or None, the SNI sslyze sends).
LISTENERS = {
    "imap": ("imap", "frontimap.mssante.fr"),
    "smtp": ("smtp", "frontsmtp.mssante.fr"),
    "imaps": (None, "frontimap-igcsante.mssante.fr"),
    "smtps": (None, "frontsmtp-igcsante.mssante.fr"),
}
PROTOCOL_SCANS = {"ssl_2_0": "--sslv2", "ssl_3_0": "--sslv3", "tls_1_0": "--tlsv1", "tls_1_1": "--tlsv1_1",
                  "tls_1_2": "--tlsv1_2", "tls_1_3": "--tlsv1_3"}
TLS13_AEAD = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def sslyze_command() -> list[str]:
    """How to run sslyze here (see the module docstring); fails under CI, skips otherwise, when absent."""
    explicit = os.environ.get("SSLYZE")
    for candidate in (explicit, shutil.which("sslyze"), str(ROOT / ".venv-sslyze" / "bin" / "sslyze")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return [candidate]
    fail_or_skip("sslyze not found: run scripts/install-sslyze.sh (or set SSLYZE)")


@pytest.fixture(scope="module")
def proxy(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, dict[str, int]]]:
    """The bi-flux production config on its four mail listeners; backends are closed ports."""
    imap, smtp, imaps, smtps, dead = free_ports(5)
    ports = {"imap": imap, "smtp": smtp, "imaps": imaps, "smtps": smtps}
    cfg = config_dict(pki, DemoPorts(imap=imap, smtp=smtp, imaps=imaps, smtps=smtps,
                                     imap_backend=f"127.0.0.1:{dead}", smtp_backend=f"127.0.0.1:{dead}"))
    path = write_config(cfg, tmp_path_factory.mktemp("sslyze") / "sniproxy.yaml")
    proc = ProxyProcess(path, wait_ports=[("127.0.0.1", p) for p in ports.values()])
    yield proc, ports
    proc.stop()


def scan(listener: str, port: int, out: Path) -> dict[str, Any]:
    """Run sslyze on one listener; the JSON result of its one server."""
    starttls, sni = LISTENERS[listener]
    cmd = [*sslyze_command(), "--quiet", f"--json_out={out}", *PROTOCOL_SCANS.values(), "--elliptic_curves"]
    if starttls:
        cmd.append(f"--starttls={starttls}")
    # host:port{ip}: connect to the IP, send the name as SNI (the flow is chosen by it).
    cmd.append(f"{sni}:{port}{{127.0.0.1}}")
    started = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"sslyze wrote no result ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}"
    results = json.loads(out.read_text())["server_scan_results"]
    assert len(results) == 1
    result: dict[str, Any] = results[0]
    result["_seconds"] = round(time.monotonic() - started, 1)
    return result


def accepted(result: dict[str, Any], scan_name: str) -> list[str]:
    """Names of the cipher suites sslyze got accepted for one protocol version."""
    attempt = result["scan_result"][f"{scan_name}_cipher_suites"]
    assert attempt["status"] == "COMPLETED", attempt
    return [s["cipher_suite"]["name"] for s in attempt["result"]["accepted_cipher_suites"]]


def is_policy_suite(name: str, version: str) -> bool:
    """ECDHE key exchange with an AEAD cipher (AES-GCM, ChaCha20-Poly1305): the ANSSI-recommended set."""
    if version == "tls_1_3":
        return name in TLS13_AEAD
    return name.startswith("TLS_ECDHE_") and ("_GCM_" in name or "CHACHA20_POLY1305" in name)


@pytest.mark.parametrize("listener", sorted(LISTENERS))
def test_sslyze_sees_only_the_policy(listener: str, proxy: tuple[ProxyProcess, dict[str, int]],
                                     tmp_path: Path) -> None:
    proc, ports = proxy
    result = scan(listener, ports[listener], tmp_path / f"{listener}.json")
    assert result["scan_status"] == "COMPLETED", result.get("connectivity_error_trace")
    suites = {name: accepted(result, name) for name in PROTOCOL_SCANS}
    # One line per listener in the test output (-s or -rP): the report quotes it.
    print(f"SSLYZE {listener}: " + json.dumps({k: v for k, v in suites.items() if v}) + f" in {result['_seconds']}s")
    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert suites[old] == [], f"{listener} accepts {old}: {suites[old]}"
    assert suites["tls_1_2"] and suites["tls_1_3"], suites
    for version in ("tls_1_2", "tls_1_3"):
        outside = [s for s in suites[version] if not is_policy_suite(s, version)]
        assert outside == [], f"{listener} {version} accepts suites outside the policy: {outside}"
    # Key exchange groups: elliptic only (no finite-field DHE in TLS 1.3 either).
    curves = result["scan_result"]["elliptic_curves"]
    assert curves["status"] == "COMPLETED", curves
    supported = [c["name"] for c in curves["result"]["supported_curves"]]
    print(f"SSLYZE {listener} curves: {supported}")
    elliptic = {"X25519", "X448", "secp256r1", "prime256v1", "secp384r1", "secp521r1"}
    assert supported and set(supported) <= elliptic, supported
    # The scanner, presenting no certificate, is told one is required.
    assert result["connectivity_result"]["client_auth_requirement"] == "REQUIRED", result["connectivity_result"]
    assert "Traceback" not in proc.log_text()
