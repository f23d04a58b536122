"""Packaging checks: the Helm chart, the Dockerfile and the image, with the tools scripts/install-deploy-tools.sh
installs (helm in .tools/bin, kubernetes-validate and hadolint in the virtualenv, buildah from Debian).
Under CI=true a missing tool fails the test instead of skipping it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import fail_or_skip

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sniproxy"
VALUES = {"default": None, "bi-flux": CHART / "values-bi-flux.yaml", "mono-flux": CHART / "values-mono-flux.yaml"}
INSTALL_HINT = "run ./scripts/install-deploy-tools.sh"


def tool(name: str) -> str:
    """Path of a deploy tool: .tools/bin, then the virtualenv's bin, then PATH; fail (CI) or skip when absent."""
    for candidate in (REPO / ".tools" / "bin" / name, Path(sys.executable).parent / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        fail_or_skip(f"{name} not installed: {INSTALL_HINT}")
    return found


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


def render(helm: str, *args: str, values: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart (release ``mss``), with a values file and ``--set`` arguments."""
    cmd = [helm, "template", "mss", str(CHART)]
    if values is not None:
        cmd += ["-f", str(values)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


def manifests(helm: str, *args: str, values: Path | None = None) -> list[dict[str, Any]]:
    r = render(helm, *args, values=values)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in docs if d["kind"] == kind])
    return found[0]


IMAGE_TAG = "localhost/sniproxy:ci"
_built: dict[str, Any] = {}


def built_image() -> dict[str, Any]:
    """``buildah inspect`` of the image built (once per session) by scripts/build-image.sh.

    The first build on a machine makes the stand-in base (debootstrap) and the dependency layer; later builds
    reuse both from /var/cache/sniproxy-imgbuild.
    """
    if "inspect" not in _built:
        tool("buildah")
        tool("debootstrap")
        r = subprocess.run([str(REPO / "scripts" / "build-image.sh"), IMAGE_TAG], capture_output=True, text=True,
                           timeout=1500, check=False, cwd=REPO)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        start = r.stdout.rindex("\n{") + 1        # the inspect JSON is printed last
        _built["inspect"] = json.loads(r.stdout[start:])
    inspect: dict[str, Any] = _built["inspect"]
    return inspect
