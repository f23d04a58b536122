"""The Dockerfile is hadolint clean, installs only the locked runtime dependencies, and the lock matches
pyproject.toml; its build stage's tools (mypyc, decision 0016) come from their own lock, also with hashes."""

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


def _pins(lock: str) -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock, re.M | re.I)}


def test_build_lock_pins_the_build_tools_with_hashes_at_the_runtime_versions() -> None:
    wanted = [line.split("#")[0].strip() for line in (REPO / "requirements-build.in").read_text().splitlines()]
    lock = (REPO / "requirements-build.lock").read_text()
    pins = _pins(lock)
    for dep in wanted:
        if dep and not dep.startswith("-"):
            assert _name(dep) in pins, f"{dep} is not in requirements-build.lock: run scripts/lock-requirements.sh"
    assert pins["mypy"] == "2.4.1", pins      # mypyc's C output depends on mypy's version (0016 measured 2.4.1)
    for block in re.split(r"^(?=[a-z0-9])", lock, flags=re.M):
        if "==" in block:
            assert "--hash=sha256:" in block, block
    # a package both stages have is the same version in both
    runtime = _pins((REPO / "requirements.lock").read_text())
    for name in pins.keys() & runtime.keys():
        assert pins[name] == runtime[name], name


def test_dockerfile_builds_the_compiled_http_half_in_the_build_stage_only() -> None:
    text = (REPO / "Dockerfile").read_text()
    build, runtime = text.split("\nFROM python:3.11-slim\n")
    assert "-r requirements-build.lock" in build and build.count("--require-hashes") == 2
    assert "scripts/build-compiled.sh" in build
    assert 'raise SystemExit(b() != "compiled")' in build, "the build must fail unless compiled"
    assert "/opt/build" not in runtime and "gcc" not in runtime and "mypy" not in runtime
    assert re.findall(r"^COPY --from=build (\S+)", runtime, re.M) == ["/opt/sniproxy"]


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
