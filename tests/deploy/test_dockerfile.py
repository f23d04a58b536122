"""The Dockerfile is hadolint clean, installs only the locked runtime dependencies, and the lock matches
pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from tests.deploy.conftest import REPO, tool


def test_hadolint_clean() -> None:
    r = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(REPO / "Dockerfile")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = (REPO / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock, re.M))
    assert pins, lock
    for dep in project["dependencies"]:
        assert _name(dep) in pins, f"{dep} is not in requirements.lock: run scripts/lock-requirements.sh"
    # every pinned package carries at least one hash, so pip --require-hashes accepts nothing else
    blocks = re.split(r"^(?=[a-z0-9])", lock, flags=re.M)
    for block in blocks:
        if "==" in block:
            assert "--hash=sha256:" in block, block
    # no test or deploy tool slipped into the runtime lock
    for extra in project["optional-dependencies"].values():
        for dep in extra:
            assert _name(dep) not in pins or _name(dep) in {_name(d) for d in project["dependencies"]}, dep


def test_dockerfile_installs_the_lock_with_hashes_and_runs_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "--require-hashes" in text and "-r requirements.lock" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^EXPOSE 1143 1587 1993 1465 1443 9100$", text, re.M)
    assert 'ENTRYPOINT ["sniproxy"]' in text and 'CMD ["run", "-c", "/etc/sniproxy/sniproxy.yaml"]' in text
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M) and "/healthz" in text
    assert text.count("FROM python:3.11-slim") == 2      # multi-stage: build, then runtime


def test_a_missing_tool_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install-deploy-tools"):
        tool("no-such-deploy-tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        tool("no-such-deploy-tool")
