"""The shipped ``conf/mssante-*.yaml``: ``sniproxy check`` passes once the operator's files are in place, with one
warning per ``!fill`` placeholder still to fill, and none once they are filled.

The operator's files (production chains, server keys) are stood in for by the look-alike test PKI, laid out at the
paths conf/README.md lists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sniproxy.demo.pki import TestPki

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("mssante-bi-flux.yaml", "mssante-mono-flux.yaml")
# The look-alike CA certificates carry no CRL distribution point (the real ones do): the only warning that is
# an artefact of the stand-in files, not of the config.
LOOKALIKE_ONLY = "the CA certificates name no CRL distribution point"


def place_operator_files(pki: TestPki, conf: Path) -> None:
    """Copy the shipped conf/ to ``conf`` and put the operator's files where conf/README.md says."""
    shutil.copytree(REPO / "conf", conf, dirs_exist_ok=True)
    op = conf / "pki" / "operator"

    def put(data: bytes, rel: str, mode: int = 0o644) -> None:
        dest = op / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)

    auth = pki.authorities
    for name, root, inter in (("igc-cps-2ter", "roots.pem", "intermediates.pem"),
                              ("igc-sante-fort-pp", "ACR-FO.pem", "ACI-FO-PP.pem"),
                              ("igc-sante-standard-pp", "ACR-ST.pem", "ACI-ST-PP.pem")):
        put(auth[name].roots[0].read_bytes(), f"{name}/{root}")
        put(auth[name].intermediates[0].read_bytes(), f"{name}/{inter}")
    for flow in ("2bis", "igcsante"):
        server = pki.servers[flow]
        put(server.chain.read_bytes(), f"server-{flow}/chain.pem")
        put(server.key.read_bytes(), f"server-{flow}/key.pem", 0o600)
        put(server.key.read_bytes() + server.chain.read_bytes(), f"server-{flow}/server.pem", 0o600)


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sniproxy", "check", "-c", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=path.parent)


def placeholder_lines(text: str) -> list[int]:
    return [i + 1 for i, ln in enumerate(text.splitlines()) if re.search(r":\s+(&\S+\s+)?!fill\b", ln)]


@pytest.mark.parametrize("name", CONFIGS)
def test_check_passes_with_one_warning_per_placeholder(pki: TestPki, tmp_path: Path, name: str) -> None:
    conf = tmp_path / "conf"
    place_operator_files(pki, conf)
    path = conf / name
    r = check(path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: OK"
    warnings = [ln.removeprefix("warning: ") for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert not [ln for ln in r.stderr.splitlines() if not ln.startswith("warning: ")], r.stderr
    text = path.read_text()
    lines = placeholder_lines(text)
    # the 2TER issuing CAs' CRLs and the three backends (IMAP, submission, SOAP web services)
    assert len(lines) == 4, lines
    placeholders = [w for w in warnings if "placeholder still to fill" in w]
    assert [int(w.split(":")[1]) for w in placeholders] == lines
    assert any(" authorities.igc-cps-2ter.crl.sources: " in w and "2TER issuing CA" in w for w in placeholders)
    assert sum(re.search(r" listeners\[\d\]\.backend: ", w) is not None for w in placeholders) == 3, placeholders
    assert [w for w in warnings if w not in placeholders and LOOKALIKE_ONLY not in w] == []

    # filled in: no placeholder warning left, and the config still checks
    filled = re.sub(r"!fill \[\][^\n]*", '["http://crl.example.org/2ter.crl"]', text)
    filled = re.sub(r"!fill (\"[^\"]*\")[^\n]*", r"\1", filled)
    path.write_text(filled)
    r = check(path)
    assert r.returncode == 0, r.stderr
    assert placeholder_lines(filled) == []
    assert "placeholder still to fill" not in r.stderr, r.stderr


@pytest.mark.parametrize("name", CONFIGS)
def test_without_the_operator_files_check_names_each_missing_file(tmp_path: Path, name: str) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    shutil.rmtree(conf / "pki" / "operator", ignore_errors=True)
    r = check(conf / name)
    assert r.returncode == 2
    assert "file not found" in r.stderr and "pki/operator/" in r.stderr


@pytest.mark.parametrize("name", CONFIGS)
def test_https_listener_serves_the_soap_web_service_names(name: str) -> None:
    from sniproxy.config.load import load

    text = (REPO / "conf" / name).read_text()
    for host in ("mss-msg.mssante.fr", "mss-idp.mssante.fr"):
        assert host in text
    if "bi-flux" in name:
        for host in ("mss-msg-igcsante.mssante.fr", "mss-idp-igcsante.mssante.fr"):
            assert re.search(rf"{re.escape(host)}: igcsante", text)
    config = load(REPO / "conf" / name, check_files=False).config
    https = [li for li in config.listeners if li.protocol.value == "https"]
    assert len(https) == 1 and https[0].binds[0].port == 443
