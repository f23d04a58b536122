"""helm/sniproxy: lint, render, validate against the Kubernetes API schemas, and the promises of the chart
(security context, probes on the admin port, grace period over the drain, one-value cutover, strict values)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, VALUES, manifests, one, render, tool

# the newest Kubernetes release whose schemas kubernetes-validate ships
KUBERNETES_VERSION = "1.37.0"
CONTAINER_PORTS = {"imap": 1143, "submission": 1587, "imaps": 1993, "smtps": 1465, "https": 1443}
SERVICE_PORTS = {"imap": 143, "submission": 587, "imaps": 993, "smtps": 465, "https": 443}


def config_of(docs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    text = one(docs, "ConfigMap", "mss-sniproxy")["data"]["sniproxy.yaml"]
    return text, yaml.safe_load(text)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return c


@pytest.mark.parametrize("name", VALUES)
def test_helm_lint_strict(helm: str, name: str) -> None:
    args = [helm, "lint", "--strict", str(CHART)]
    if VALUES[name] is not None:
        args += ["-f", str(VALUES[name])]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 chart(s) failed" in r.stdout


@pytest.mark.parametrize(("name", "extra"), [
    ("default", []), ("bi-flux", []), ("mono-flux", []),
    ("default", ["--set", "autoscaling.enabled=true", "--set", "crlCache.persistence.enabled=true",
                 "--set", "service.type=NodePort", "--set", "service.nodePorts.imap=30143",
                 "--set", "sniproxy.listeners.imaps.enabled=true", "--set", "sniproxy.listeners.smtps.enabled=true",
                 "--set", "tls.server2bis.crt=x", "--set", "tls.server2bis.key=y",
                 "--set", "trust.files.a\\.pem=z", "--set", "secrets.files.pw=p"]),
])
def test_rendered_manifests_validate_strictly(helm: str, tmp_path: Path, name: str, extra: list[str]) -> None:
    r = render(helm, *extra, values=VALUES[name])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(r.stdout)
    v = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(out)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert v.returncode == 0, v.stdout + v.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(r.stdout) if d}
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"):
        assert f"passed for resource {kind.lower()}/" in v.stdout + v.stderr, (kind, v.stdout)
    if extra:
        assert {"HorizontalPodAutoscaler", "PersistentVolumeClaim", "Secret"} <= kinds


@pytest.mark.parametrize(("values", "key"), [
    ("replicaCont: 3\n", "replicaCont"),
    ("sniproxy:\n  stratgy: mono-flux\n", "stratgy"),
    ("service:\n  externalTraficPolicy: Local\n", "externalTraficPolicy"),
    ("sniproxy:\n  listeners:\n    imap: {enabled: true, backend: '10.0.0.1:143', backnd: x}\n", "backnd"),
    ("sniproxy:\n  authorities:\n    x: {roots: [a.pem], intermediate: [b.pem]}\n", "intermediate"),
    ("tls:\n  server2bis: {existingSecrets: a}\n", "existingSecrets"),
])
def test_a_misspelled_key_fails_schema_validation(helm: str, tmp_path: Path, values: str, key: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    for cmd in ([helm, "lint", "--strict", str(CHART), "-f", str(path)],
                [helm, "template", "mss", str(CHART), "-f", str(path)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode != 0, cmd
        assert f"Additional property {key} is not allowed" in r.stdout + r.stderr


@pytest.mark.parametrize(("values", "message"), [
    ("sniproxy:\n  strategy: mono\n", "strategy"),
    ("sniproxy:\n  monoFluxCertificate: igc-sante\n", "monoFluxCertificate"),
    ("service:\n  type: ClusterIP\n", "type"),
    ("sniproxy:\n  listeners:\n    imap: {enabled: true, backend: 'dovecot.mail:143'}\n", "backend"),
])
def test_a_wrong_value_fails_schema_validation(helm: str, tmp_path: Path, values: str, message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    r = render(helm, values=path)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_grace_period_must_cover_the_drain(helm: str) -> None:
    r = render(helm, "--set", "terminationGracePeriodSeconds=25")
    assert r.returncode != 0 and "must exceed sniproxy.drainTimeout" in r.stderr
    docs = manifests(helm, "--set", "sniproxy.drainTimeout=2m", "--set", "terminationGracePeriodSeconds=130")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 130


@pytest.mark.parametrize("name", VALUES)
def test_pod_security_probes_and_ports(helm: str, name: str) -> None:
    docs = manifests(helm, values=VALUES[name])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    c = container(docs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    _, config = config_of(docs)
    drain = config["drain"]["timeout"]
    assert pod["terminationGracePeriodSeconds"] > int(str(drain).rstrip("s"))
    # the probes hit the admin endpoint's port, which the config binds on every address
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin_port = int(config["admin"]["bind"].rsplit(":", 1)[1])
    assert config["admin"]["bind"].startswith("0.0.0.0:") and ports["admin"] == admin_port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # every listener binds the container port the pod declares, and the Service maps the standard port to it
    svc = one(docs, "Service", "mss-sniproxy")
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    for listener in config["listeners"]:
        n = listener["name"]
        assert listener["bind"] == [f"0.0.0.0:{CONTAINER_PORTS[n]}"] and ports[n] == CONTAINER_PORTS[n]
        assert svc_ports[n] == (SERVICE_PORTS[n], n)
    assert set(svc_ports) == {li["name"] for li in config["listeners"]}
    assert "admin" not in svc_ports          # never on the load balancer
    # the config path the container runs is the ConfigMap's mount; the state dir is a writable volume
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert c["args"][:2] == ["run", "-c"] and str(Path(c["args"][2]).parent) in mounts
    assert config["state_dir"] in mounts and not mounts[config["state_dir"]].get("readOnly", False)
    assert "/tmp" in mounts


def test_mono_flux_cutover_is_one_value(helm: str) -> None:
    mono = VALUES["mono-flux"]
    before = manifests(helm, values=mono)
    after = manifests(helm, "--set", "sniproxy.monoFluxCertificate=igcsante", values=mono)
    t_before, c_before = config_of(before)
    t_after, c_after = config_of(after)
    assert c_before["flows"]["mssante"]["certificate"].endswith("/2bis/tls.crt")
    assert c_after["flows"]["mssante"]["certificate"].endswith("/igcsante/tls.crt")
    assert c_after["flows"]["mssante"]["key"].endswith("/igcsante/tls.key")
    changed = [(a, b) for a, b in zip(t_before.splitlines(), t_after.splitlines(), strict=True) if a != b]
    assert len(changed) == 3, changed           # the comment naming the value, certificate, key
    # every listener serves the single flow, so the one value switches them all
    assert {li["flow"] for li in c_after["listeners"]} == {"mssante"}
    # both certificates are mounted all along: the switch needs no new Secret
    vols = {v["name"] for v in one(after, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert {"tls-2bis", "tls-igcsante"} <= vols
    # configChange: roll: the pods roll with the change
    rolled = [manifests(helm, "--set", "configChange=roll", "--set", f"sniproxy.monoFluxCertificate={cert}",
                        values=mono) for cert in ("2bis", "igcsante")]
    ann = [one(d, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for d in rolled]
    assert ann[0] != ann[1]


def test_bi_flux_routes_both_flows_by_sni(helm: str) -> None:
    _, config = config_of(manifests(helm, values=VALUES["bi-flux"]))
    by = {li["name"]: li for li in config["listeners"]}
    assert by["https"]["sni"] == {"mss-msg.mssante.fr": "2bis", "mss-idp.mssante.fr": "2bis",
                                  "mss-msg-igcsante.mssante.fr": "igcsante", "mss-idp-igcsante.mssante.fr": "igcsante"}
    assert by["imap"]["sni"] == {"frontimap.mssante.fr": "2bis", "frontimap-igcsante.mssante.fr": "igcsante"}
    assert all(li["default_flow"] == "2bis" for li in config["listeners"])
    assert set(config["flows"]) == {"2bis", "igcsante"}


def test_config_change_reload_mode_does_not_roll_and_watches(helm: str) -> None:
    docs = manifests(helm, "--set", "configChange=reload", "--set", "reloadInterval=2s")
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("checksum/")]
    assert config_of(docs)[1]["reload"] == {"watch": True, "interval": "2s"}
    # no subPath mount: the kubelet updates the files in place only without one
    assert not [m for m in container(docs)["volumeMounts"] if "subPath" in m]
    roll = manifests(helm, "--set", "configChange=roll")
    assert "reload" not in config_of(roll)[1]
    assert "checksum/config" in one(roll, "Deployment")["spec"]["template"]["metadata"]["annotations"]


def test_proxy_protocol_and_traffic_policy_from_values(helm: str) -> None:
    docs = manifests(helm, values=VALUES["mono-flux"])
    _, config = config_of(docs)
    assert one(docs, "Service", "mss-sniproxy")["spec"]["externalTrafficPolicy"] == "Cluster"
    assert all(li["proxy_protocol_from"] == ["10.0.0.0/8"] for li in config["listeners"])
    docs = manifests(helm, values=VALUES["bi-flux"])
    _, config = config_of(docs)
    assert one(docs, "Service", "mss-sniproxy")["spec"]["externalTrafficPolicy"] == "Local"
    assert not any("proxy_protocol_from" in li for li in config["listeners"])


@pytest.mark.parametrize("name", VALUES)
@pytest.mark.parametrize("extra", [[], ["--set", "proxyProtocol.enabled=true",
                                        "--set", "proxyProtocol.from={10.0.0.0/8}",
                                        "--set", "sniproxy.listeners.imaps.enabled=true",
                                        "--set", "sniproxy.listeners.smtps.enabled=true",
                                        "--set", "sniproxy.acceptStandardCards=true"]])
def test_rendered_config_passes_sniproxy_validation(helm: str, tmp_path: Path, name: str, extra: list[str]) -> None:
    """The rendered sniproxy.yaml is a valid config (structure: the mounted PEM files are not here)."""
    from sniproxy.config.load import load

    text, _ = config_of(manifests(helm, *extra, values=VALUES[name]))
    path = tmp_path / "sniproxy.yaml"
    path.write_text(text)
    config = load(path, check_files=False).config
    assert config.admin is not None and config.admin.bind.port == 9100
    assert {lr.name for lr in config.listeners} >= {"imap", "submission"}
