"""Render a bi-flux config for the generated test PKI (used by ``sniproxy demo``, tests and bench).

It mirrors ``conf/mssante-bi-flux.yaml``: flow ``2bis`` (IGC CPS 2BIS classe 4 server certificate,
also the no-SNI default) and flow ``igcsante`` (IGC Santé Élémentaire Organisations), both accepting
IGC CPS 2TER and IGC Santé Fort cards, Standard present but off unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sniproxy.demo.pki import TestPki

IMAP_NAMES = {"frontimap.mssante.fr": "2bis", "frontimap-igcsante.mssante.fr": "igcsante"}
SMTP_NAMES = {"frontsmtp.mssante.fr": "2bis", "frontsmtp-igcsante.mssante.fr": "igcsante"}


@dataclass
class DemoPorts:
    """Where the proxy listens and where its backends are (``None``: listener not configured)."""

    imap: int | None = None
    smtp: int | None = None
    imaps: int | None = None
    smtps: int | None = None
    tls: int | None = None
    imap_backend: str = "127.0.0.1:10143"
    smtp_backend: str = "127.0.0.1:10025"
    host: str = "127.0.0.1"
    extra: dict[str, Any] = field(default_factory=dict)


def _authority(pki: TestPki, name: str, enabled: bool = True) -> dict[str, Any]:
    files = pki.authorities[name]
    return {"roots": [str(p) for p in files.roots], "intermediates": [str(p) for p in files.intermediates],
            "enabled": enabled}


def config_dict(pki: TestPki, ports: DemoPorts, *, profile: str = "production",
                standard_enabled: bool = False, client_auth: str = "required",
                crls: dict[str, list[Path]] | None = None, state_dir: Path | None = None) -> dict[str, Any]:
    """The config as a plain dict (tests tweak it before writing). ``crls``: set name -> CRL files."""
    test = profile == "test"
    sfx = "-test" if test else ""
    sets = [f"igc-cps-2ter{sfx}", f"igc-sante-fort-pp{sfx}", f"igc-sante-standard-pp{sfx}"]
    authorities = {s: _authority(pki, s, enabled=standard_enabled or "standard" not in s) for s in sets}
    for name, paths in (crls or {}).items():
        if name in authorities:
            authorities[name]["crl"] = [str(p) for p in paths]
    flows = {
        name: {
            "certificate": str(pki.servers[name].chain),
            "key": str(pki.servers[name].key),
            "client_auth": client_auth,
            "authorities": sets,
        }
        for name in ("2bis", "igcsante")
    }
    listeners: list[dict[str, Any]] = []

    def add(name: str, port: int | None, proto: str, backend: str, names: dict[str, str]) -> None:
        if port is None:
            return
        listeners.append({"name": name, "bind": f"{ports.host}:{port}" if ":" not in ports.host
                          else f"[{ports.host}]:{port}", "protocol": proto, "backend": backend,
                          "hostname": next(iter(names)), "sni": dict(names), "default_flow": "2bis"})

    add("imap", ports.imap, "imap", ports.imap_backend, IMAP_NAMES)
    add("smtp", ports.smtp, "smtp", ports.smtp_backend, SMTP_NAMES)
    add("imaps", ports.imaps, "imaps", ports.imap_backend, IMAP_NAMES)
    add("smtps", ports.smtps, "smtps", ports.smtp_backend, SMTP_NAMES)
    add("tls", ports.tls, "tls", ports.imap_backend, IMAP_NAMES)
    top: dict[str, Any] = {"state_dir": str(state_dir)} if state_dir is not None else {}
    return {"profile": profile, "workers": 1, "log": {"level": "info", "format": "json"}, **top,
            "authorities": authorities, "flows": flows, "listeners": listeners, **ports.extra}


class _NoAliasDumper(yaml.SafeDumper):
    """Never write anchors/aliases: a config error must point at the line of its own flow."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_config(data: dict[str, Any], dest: Path) -> Path:
    """Write a config dict as YAML and return its path."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False))
    return dest
