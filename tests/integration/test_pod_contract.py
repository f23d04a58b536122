"""The pod contract: the chart's Deployment, run as the kubelet would run it.

The chart is rendered with values pointing at a real Dovecot and the look-alike PKI; the container spec is taken
from the Deployment (args, env, ports, probes, security context, volume mounts) and the ConfigMap and Secret
contents are written out as the files the volumes would hold. Then the built image runs that way: its root
filesystem read-only, as the pod's runAsUser, with the volumes bound at their mount paths (tests/deploy/imageroot.py:
podman cannot run here, a private mount namespace and chroot do what it would). Checked: the readiness and
liveness paths answer 200 on the probes' port, a STARTTLS IMAP client with a card logs in to Dovecot through it,
the mono-flux cutover done as `helm upgrade --set sniproxy.monoFluxCertificate=igcsante` does it (the
kubelet swapping the ConfigMap's content in place, configChange: reload) reaches new connections while an open
session keeps working, SIGTERM drains and exits 0 within terminationGracePeriodSeconds.

What this catches: a probe on the wrong port, a config path that does not match its mount, a cache dir on the
read-only root, a listener on a port the pod does not declare, a secret the process cannot read as its user.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.demo.crls import write_crls
from sniproxy.demo.pki import TestPki
from tests.deploy.conftest import IMAGE_TAG, built_image, one, render, tool
from tests.deploy.imageroot import image_root, pod_command
from tests.integration.clients import imap_starttls
from tests.integration.peers import Dovecot

pytestmark = pytest.mark.integration


SETS = ("igc-cps-2ter", "igc-sante-fort-pp")


def contract_values(pki: TestPki, dovecot: Dovecot, path: Path) -> Path:
    """Values for the test: mono-flux on the 2BIS certificate, config changes applied in place, IMAP to the private
    Dovecot, the look-alike PKI as trust and server keys,
    its CRLs (card ``revoked`` listed) as PEM files of the trust ConfigMap."""
    auth = pki.authorities
    trust = {f"{name}-{kind}.pem": getattr(auth[name], kind)[0].read_text()
             for name in SETS for kind in ("roots", "intermediates")}
    crls = write_crls(pki, path.parent / "crls", SETS)
    for files in crls.values():
        for f in files:
            trust[f"{f.name}.pem"] = x509.load_der_x509_crl(f.read_bytes()).public_bytes(Encoding.PEM).decode()
    values = {
        "terminationGracePeriodSeconds": 15,
        "configChange": "reload",
        "reloadInterval": "1s",
        "sniproxy": {
            "strategy": "mono-flux",
            "monoFluxCertificate": "2bis",
            "workers": 2,
            "log": {"level": "info", "format": "json"},
            "drainTimeout": "5s",
            "listeners": {
                "imap": {"enabled": True, "backend": f"127.0.0.1:{dovecot.imap_port}"},
                "submission": {"enabled": False, "backend": "127.0.0.1:1"},
                "https": {"enabled": False, "backend": "127.0.0.1:1"},
            },
            # the CRLs from files only: readiness waits for every required CRL, and nothing here may reach
            # the real CRL servers
            "authorities": {
                name: {"roots": [f"{name}-roots.pem"], "intermediates": [f"{name}-intermediates.pem"],
                       "crl": {"sources": [f"{f.name}.pem" for f in crls[name]], "fromCertificates": False}}
                for name in SETS
            } | {"igc-sante-standard-pp": None},
        },
        "tls": {flow: {"crt": pki.servers[name].chain.read_text(), "key": pki.servers[name].key.read_text()}
                for flow, name in (("server2bis", "2bis"), ("serverIgcsante", "igcsante"))},
        "trust": {"files": trust},
    }
    path.write_text(yaml.safe_dump(values))
    return path


def write_volume(volume: dict[str, Any], docs: list[dict[str, Any]], dest: Path, gid: int) -> Path | None:
    """The files a ConfigMap or Secret volume holds, written under ``dest``; None for an emptyDir."""
    if "emptyDir" in volume:
        return None
    dest.mkdir(parents=True)
    dest.chmod(0o755)
    if "configMap" in volume:
        data = {k: v.encode() for k, v in one(docs, "ConfigMap", volume["configMap"]["name"])["data"].items()}
        mode = volume["configMap"].get("defaultMode", 0o644)
    else:
        found = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == volume["secret"]["secretName"]]
        if not found and volume["secret"].get("optional"):
            return dest
        data = {k: base64.b64decode(v) for k, v in found[0]["data"].items()}
        mode = volume["secret"].get("defaultMode", 0o644)
    for name, content in data.items():
        f = dest / name
        f.write_bytes(content)
        os.chown(f, 0, gid)          # fsGroup: the kubelet gives the files the pod's group
        f.chmod(mode)
    return dest


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def presented(m: imaplib.IMAP4) -> bytes:
    sock = m.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def server_der(pki: TestPki, name: str) -> bytes:
    return x509.load_pem_x509_certificate(pki.servers[name].cert.read_bytes()).public_bytes(Encoding.DER)


def test_the_deployment_runs_as_specified(pki: TestPki, dovecot: Dovecot, tmp_path: Path) -> None:
    tool("unshare")
    image = built_image()
    values = contract_values(pki, dovecot, tmp_path / "values.yaml")
    r = render(tool("helm"), values=values)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    gid = int(pod["securityContext"]["fsGroup"])
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True

    volumes = {v["name"]: v for v in pod["volumes"]}
    binds: dict[str, Path] = {}
    tmpfs: list[str] = []
    for mount in spec["volumeMounts"]:
        host = write_volume(volumes[mount["name"]], docs, tmp_path / "volumes" / mount["name"], gid)
        if host is None:
            tmpfs.append(mount["mountPath"])
        else:
            binds[mount["mountPath"]] = host
    config = image["Docker"]["config"]
    env = dict(e.split("=", 1) for e in config["Env"]) | {e["name"]: e["value"] for e in spec.get("env", [])}
    argv = spec.get("command", config["Entrypoint"]) + spec.get("args", config["Cmd"])
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}

    def probe(name: str) -> str:
        get = spec[name]["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        return f"http://127.0.0.1:{port}{get['path']}"

    log = (tmp_path / "pod.log").open("w+")
    with image_root(IMAGE_TAG) as root:
        proc = subprocess.Popen(pod_command(root, argv, user=user, env=env, binds=binds, tmpfs=tmpfs,
                                            workdir=config.get("WorkingDir") or "/"),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while http_status(probe("readinessProbe")) != 200:
                assert proc.poll() is None, (tmp_path / "pod.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "pod.log").read_text()[-3000:]
                time.sleep(0.3)
            assert http_status(probe("livenessProbe")) == 200
            # the process the kubelet would signal is sniproxy itself, as the pod's user
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
            assert uid_line.split()[1:] == [user.split(":")[0]] * 4, uid_line

            # a revoked card is refused: the CRLs from the mounted ConfigMap are in force
            with pytest.raises((ssl.SSLError, OSError, imaplib.IMAP4.error)):
                r_m = imap_starttls(ports["imap"], pki, "revoked", "frontimap-igcsante.mssante.fr")
                try:
                    r_m.noop()          # TLS 1.3: a refused card shows on the first read
                finally:
                    with contextlib.suppress(OSError):
                        r_m.shutdown()
            # a card through the pod's IMAP port to Dovecot, on the 2BIS certificate
            m = imap_starttls(ports["imap"], pki, "fort", "frontimap.mssante.fr")
            typ, _ = m.login("alice@example.test", "alicepw")
            assert typ == "OK"
            assert m.select("INBOX")[0] == "OK"
            assert presented(m) == server_der(pki, "2bis")

            # the cutover value changed: the kubelet puts the new ConfigMap content in place (atomically)
            after = render(tool("helm"), "--set", "sniproxy.monoFluxCertificate=igcsante", values=values)
            assert after.returncode == 0, after.stderr
            new_docs = [d for d in yaml.safe_load_all(after.stdout) if d]
            cm = one(new_docs, "ConfigMap", volumes["config"]["configMap"]["name"])
            target = binds[next(mt["mountPath"] for mt in spec["volumeMounts"] if mt["name"] == "config")]
            for name, content in cm["data"].items():
                tmp = target / f".{name}.new"
                tmp.write_text(content)
                os.chown(tmp, 0, gid)
                tmp.chmod(0o644)
                tmp.replace(target / name)
            deadline = time.monotonic() + 30
            while True:
                n = imap_starttls(ports["imap"], pki, "fort", "frontimap.mssante.fr")
                now_serving = presented(n)
                n.logout()
                if now_serving == server_der(pki, "igcsante"):
                    break
                assert time.monotonic() < deadline, (tmp_path / "pod.log").read_text()[-3000:]
                time.sleep(0.5)
            # the session opened before the change was not dropped
            assert m.noop()[0] == "OK" and m.select("INBOX")[0] == "OK"
            # a session still open at SIGTERM: the drain must end it within the grace period
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            grace = pod["terminationGracePeriodSeconds"]
            code = proc.wait(timeout=grace)
            elapsed = time.monotonic() - started
            assert code == 0, (tmp_path / "pod.log").read_text()[-3000:]
            assert elapsed < grace
            try:
                m.noop()
                m.logout()
            except (OSError, EOFError, m.abort):   # the drain may have closed it already: that is allowed
                with contextlib.suppress(OSError):
                    m.shutdown()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
    text = (tmp_path / "pod.log").read_text()
    # nothing written outside the volumes: a write to the read-only root would have failed loudly
    assert "Read-only file system" not in text, text[-3000:]
