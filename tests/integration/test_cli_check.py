"""``python -m sniproxy check``: exit codes and located error messages, on configs for the test PKI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from sniproxy import __version__
from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.pki import TestPki


def _config(pki: TestPki) -> dict[str, Any]:
    # JSON round trip: no shared lists, so the YAML has no anchors/aliases and one line per value.
    data: dict[str, Any] = json.loads(json.dumps(config_dict(pki, DemoPorts(imap=11143, smtp=11587))))
    return data


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sniproxy", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=30)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return _run("check", "-c", str(path), cwd=path.parent)


def _line(text: str, pattern: str, *, after: str | None = None) -> int:
    """1-based number of the first line matching regex ``pattern``.

    With ``after``, the search starts below the first line matching that regex.
    """
    lines = text.splitlines()
    start = 0
    if after is not None:
        start = next(i for i, ln in enumerate(lines) if re.search(after, ln)) + 1
    return next(i + 1 for i in range(start, len(lines)) if re.search(pattern, lines[i]))


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def test_version() -> None:
    r = _run("--version", cwd=Path.cwd())
    assert r.returncode == 0
    assert r.stdout.strip() == f"sniproxy {__version__}"


def test_help_describes_the_tool_for_a_user() -> None:
    r = _run("--help", cwd=Path.cwd())
    assert r.returncode == 0
    # the user's description and exit codes, not the module's developer docstring
    assert "TLS front door for MSSanté" in r.stdout and "exit codes: 0 success" in r.stdout
    assert "argv in, exit code out" not in r.stdout and "The only module that exits" not in r.stdout
    for command in ("run", "check", "crl", "verify", "demo"):
        assert re.search(rf"^\s+{command}\s", r.stdout, re.M), command


def test_valid_config_ok(pki: TestPki, tmp_path: Path) -> None:
    path = write_config(_config(pki), tmp_path / "ok.yaml")
    r = _check(path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: OK"
    assert _errors(r.stderr) == []


def test_valid_config_with_relative_paths(pki: TestPki, tmp_path: Path) -> None:
    """Paths resolve against the config file's folder, not the working directory."""
    data = _config(pki)
    for flow in data["flows"].values():
        flow["certificate"] = str(Path(flow["certificate"]).relative_to(pki.root.parent))
        flow["key"] = str(Path(flow["key"]).relative_to(pki.root.parent))
    for aset in data["authorities"].values():
        aset["roots"] = [str(Path(p).relative_to(pki.root.parent)) for p in aset["roots"]]
        aset["intermediates"] = [str(Path(p).relative_to(pki.root.parent)) for p in aset["intermediates"]]
    path = write_config(data, pki.root.parent / "relative.yaml")
    r = _run("check", "-c", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_missing_certificate_file(pki: TestPki, tmp_path: Path) -> None:
    data = _config(pki)
    missing = tmp_path / "no-such-chain.pem"
    data["flows"]["2bis"]["certificate"] = str(missing)
    path = write_config(data, tmp_path / "missing.yaml")
    text = path.read_text()
    r = _check(path)
    assert r.returncode == 2
    assert r.stdout == ""
    line = _line(text, r"^\s+certificate: .*no-such-chain\.pem$")
    assert _errors(r.stderr) == [f"error: {path}:{line}: flows.2bis.certificate: file not found: {missing}"]


def test_missing_key_file(pki: TestPki, tmp_path: Path) -> None:
    data = _config(pki)
    missing = tmp_path / "no-such-key.pem"
    data["flows"]["igcsante"]["key"] = str(missing)
    path = write_config(data, tmp_path / "missing-key.yaml")
    r = _check(path)
    assert r.returncode == 2
    line = _line(path.read_text(), r"^\s+key: .*no-such-key\.pem$")
    errors = _errors(r.stderr)
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {path}:{line}: flows.igcsante.key: file not found")


def test_key_not_matching_certificate(pki: TestPki, tmp_path: Path) -> None:
    data = _config(pki)
    data["flows"]["2bis"]["key"] = str(pki.servers["igcsante"].key)
    path = write_config(data, tmp_path / "swapped-key.yaml")
    text = path.read_text()
    r = _check(path)
    assert r.returncode == 2
    assert r.stdout == ""
    line = _line(text, r"^\s+key: ", after=r"^  2bis:$")
    assert line < _line(text, r"^  igcsante:$")
    errors = _errors(r.stderr)
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: {path}:{line}: flows.2bis.key: private key does not match")
    assert str(pki.servers["2bis"].chain) in errors[0]


def test_unknown_authority_set(pki: TestPki, tmp_path: Path) -> None:
    data = _config(pki)
    data["flows"]["igcsante"]["authorities"].append("igc-cps-2ter-typo")
    index = len(data["flows"]["igcsante"]["authorities"]) - 1
    path = write_config(data, tmp_path / "unknown-authority.yaml")
    text = path.read_text()
    r = _check(path)
    assert r.returncode == 2
    line = _line(text, r"^\s+- igc-cps-2ter-typo$")
    assert line > _line(text, r"^  igcsante:$")
    errors = _errors(r.stderr)
    assert len(errors) == 1, r.stderr
    where = f"error: {path}:{line}: flows.igcsante.authorities[{index}]: "
    assert errors[0].startswith(where + "unknown authority set 'igc-cps-2ter-typo'")


def test_duplicate_sni_name_regardless_of_case(pki: TestPki, tmp_path: Path) -> None:
    text = write_config(_config(pki), tmp_path / "base.yaml").read_text()
    original = "    frontimap.mssante.fr: 2bis\n"
    assert text.count(original) == 1
    text = text.replace(original, original + "    FRONTIMAP.mssante.fr: igcsante\n")
    path = tmp_path / "duplicate-sni.yaml"
    path.write_text(text)
    r = _check(path)
    assert r.returncode == 2
    assert r.stdout == ""
    first = _line(text, r"^    frontimap\.mssante\.fr: 2bis$")
    dup = _line(text, r"^    FRONTIMAP\.mssante\.fr: igcsante$")
    assert dup == first + 1
    errors = _errors(r.stderr)
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"error: {path}:{dup}: listeners[0].sni.FRONTIMAP.mssante.fr: ")
    assert "frontimap.mssante.fr" in errors[0]
    assert f"(line {first})" in errors[0]


def test_exact_duplicate_yaml_key(pki: TestPki, tmp_path: Path) -> None:
    """The same key twice (which PyYAML alone would silently collapse) is an error too."""
    text = write_config(_config(pki), tmp_path / "base.yaml").read_text()
    original = "    frontsmtp.mssante.fr: 2bis\n"
    text = text.replace(original, original + "    frontsmtp.mssante.fr: igcsante\n")
    path = tmp_path / "duplicate-key.yaml"
    path.write_text(text)
    r = _check(path)
    assert r.returncode == 2
    dup = _line(text, r"^    frontsmtp\.mssante\.fr: igcsante$")
    errors = _errors(r.stderr)
    assert errors, r.stderr
    assert any(e.startswith(f"error: {path}:{dup}: listeners[1].sni") for e in errors), r.stderr


def test_every_error_reported_in_one_pass(pki: TestPki, tmp_path: Path) -> None:
    data = _config(pki)
    data["flows"]["2bis"]["certificate"] = str(tmp_path / "gone.pem")
    data["flows"]["igcsante"]["authorities"].append("nosuch")
    path = write_config(data, tmp_path / "several.yaml")
    text = path.read_text()
    r = _check(path)
    assert r.returncode == 2
    errors = _errors(r.stderr)
    assert len(errors) == 2, r.stderr
    cert_line = _line(text, r"gone\.pem$")
    auth_line = _line(text, r"- nosuch$")
    assert any(e.startswith(f"error: {path}:{cert_line}: flows.2bis.certificate: ") for e in errors)
    assert any(e.startswith(f"error: {path}:{auth_line}: flows.igcsante.authorities[3]: ") for e in errors)


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    r = _check(path)
    assert r.returncode == 2
    errors = _errors(r.stderr)
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {path}: cannot read config file")
