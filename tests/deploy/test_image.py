"""The image builds with buildah (no engine) and carries what the Dockerfile promises: non-root user, the exposed
ports, the entrypoint and command, the healthcheck on the admin endpoint, SIGTERM as stop signal, the volumes a
read-only root needs, and the HTTP half compiled with mypyc (decision 0016) without the tools that compiled it.
The build is cached between runs (scripts/build-image.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import IMAGE_TAG, REPO, built_image

TAG = IMAGE_TAG


@pytest.fixture(scope="session")
def image() -> dict[str, Any]:
    """``buildah inspect`` of the image (first build ~6 min, cached ~1 min)."""
    return built_image()


def test_image_runs_as_non_root_with_the_promised_interface(image: dict[str, Any]) -> None:
    config = image["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {f"{p}/tcp" for p in (1143, 1587, 1993, 1465, 1443, 9100)}
    assert config["Entrypoint"] == ["sniproxy"]
    assert config["Cmd"] == ["run", "-c", "/etc/sniproxy/sniproxy.yaml"]
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["Volumes"]) == {"/var/lib/sniproxy", "/tmp"}
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD" and "http://127.0.0.1:9100/healthz" in " ".join(health)
    assert "urllib.request" in " ".join(health)


def test_image_runs_read_only_as_its_user_with_only_the_locked_packages(image: dict[str, Any]) -> None:
    from tests.deploy.imageroot import image_root, pod_command

    env = dict(e.split("=", 1) for e in image["Docker"]["config"]["Env"])
    with image_root(TAG) as root:
        site = next((root / "opt" / "sniproxy" / "lib").glob("python3*/site-packages"))
        installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
        lock = (REPO / "requirements.lock").read_text()
        assert "pip" not in installed and "setuptools" not in installed, installed
        assert "sniproxy" in installed
        for name in installed - {"sniproxy"}:
            assert f"\n{name.replace('_', '-')}==" in lock.lower(), name
        script = ("import os, pathlib, sys\n"
                  "print(os.getuid(), os.getgid())\n"
                  "try:\n    pathlib.Path('/opt/x').write_text('x')\nexcept OSError as e:\n    print('ro', e.errno)\n"
                  "pathlib.Path('/var/lib/sniproxy/x').write_text('x'); print('state ok')\n")
        cmd = pod_command(root, ["/opt/sniproxy/bin/python", "-c", script], user="10001:10001", env=env,
                          binds={}, tmpfs=["/var/lib/sniproxy", "/tmp"])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:3] == ["10001 10001", "ro 30", "state ok"], r.stdout   # 30 = EROFS
        version = subprocess.run(pod_command(root, ["sniproxy", "--version"], user="10001:10001", env=env,
                                             binds={}, tmpfs=["/tmp"]),
                                 capture_output=True, text=True, timeout=60, check=False)
        assert version.returncode == 0 and version.stdout.startswith("sniproxy "), version.stderr


def test_image_ships_the_compiled_http_half_and_none_of_its_build_tools(image: dict[str, Any]) -> None:
    from tests.deploy.imageroot import image_root, pod_command

    env = dict(e.split("=", 1) for e in image["Docker"]["config"]["Env"])
    with image_root(TAG) as root:
        # what the worker logs in its ready event (http_build): every module of the HTTP half an extension
        script = "from sniproxy.compiled import http_build; print(http_build())"
        cmd = pod_command(root, ["python", "-c", script], user="10001:10001", env=env, binds={}, tmpfs=["/tmp"])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0 and r.stdout.strip() == "compiled", r.stdout + r.stderr
        site = next((root / "opt" / "sniproxy" / "lib").glob("python3*/site-packages"))
        assert list((site / "sniproxy").glob("http__mypyc.cpython-*.so")), "mypyc's shared runtime is missing"
        # the build stage's compiler, build venv and mypy stay there; mypyc's modules need none of them to run
        installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
        assert not installed & {"mypy", "mypy_extensions", "librt", "setuptools"}, installed
        assert not (root / "opt" / "build").exists()
        assert not list(root.glob("usr/bin/gcc*")) and not list(root.glob("usr/include/python3*"))
        assert not list(site.glob("**/.mypy_cache"))


def test_image_worker_logs_the_compiled_build_when_ready(image: dict[str, Any], tmp_path: Path) -> None:
    """``sniproxy run`` in the image, as the pod runs it (its user, read-only root, the config mounted at
    /etc/sniproxy): the worker's ``ready`` event says ``http_build: compiled``."""
    from sniproxy.demo.conf import DemoPorts, config_dict, write_config
    from sniproxy.demo.pki import build
    from tests.conftest import free_port
    from tests.deploy.imageroot import image_root, pod_command
    from tests.integration.proxyproc import terminate

    etc = tmp_path / "etc"          # mounted at /etc/sniproxy, the PKI with the config
    cfg = config_dict(build(etc / "pki"), DemoPorts(tls=free_port()), state_dir=Path("/var/lib/sniproxy"))
    conf = write_config(cfg, etc / "sniproxy.yaml")
    conf.write_text(conf.read_text().replace(str(etc), "/etc/sniproxy"))
    for path in (tmp_path, *tmp_path.rglob("*")):
        os.chown(path, 10001, 10001)       # the image's user reads its keys (0600), as with a pod's fsGroup
    env = dict(e.split("=", 1) for e in image["Docker"]["config"]["Env"])
    with image_root(TAG) as root:
        cmd = pod_command(root, ["sniproxy", "run", "-c", "/etc/sniproxy/sniproxy.yaml"], user="10001:10001",
                          env=env, binds={"/etc/sniproxy": etc}, tmpfs=["/var/lib/sniproxy", "/tmp"])
        lines: list[str] = []
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
            # bounded: a worker that hangs without a line is killed, which ends the read below
            watchdog = threading.Timer(60, proc.kill)
            watchdog.start()
            try:
                assert proc.stderr is not None
                deadline = time.monotonic() + 60
                ready: dict[str, Any] | None = None
                # bounded: the worker logs one line per event; it is ready within seconds or has failed
                while ready is None and time.monotonic() < deadline and len(lines) < 200:
                    line = proc.stderr.readline()
                    if not line:
                        break
                    lines.append(line)
                    event = json.loads(line) if line.startswith("{") else {}
                    if event.get("event") == "ready":
                        ready = event
            finally:
                watchdog.cancel()
                terminate(proc)
        assert ready is not None, "".join(lines)
        assert ready["http_build"] == "compiled", ready
