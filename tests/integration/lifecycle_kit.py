"""Helpers of the lifecycle tests: a bi-flux config file to edit and reload, the certificate a real
``openssl s_client`` sees, worker pids, process liveness."""

from __future__ import annotations

import copy
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.pki import TestPki
from tests.conftest import free_ports
from tests.integration.clients import s_client, server_roots
from tests.integration.proxyproc import ProxyProcess

IMAP_2BIS, IMAP_SANTE = "frontimap.mssante.fr", "frontimap-igcsante.mssante.fr"
_CN = re.compile(r"^subject=.*?CN\s*=\s*([^,/\n]+)", re.MULTILINE)


def lifecycle_config(pki: TestPki, imap_backend: int, smtp_backend: int | None = None, *,
                     workers: int = 2) -> tuple[dict[str, Any], DemoPorts]:
    """Bi-flux on the test PKI: IMAP STARTTLS and IMAPS (and SMTP when a backend is given)."""
    imap, imaps, smtp, smtps = free_ports(4)
    ports = DemoPorts(imap=imap, imaps=imaps, smtp=smtp if smtp_backend else None,
                      smtps=smtps if smtp_backend else None,
                      imap_backend=f"127.0.0.1:{imap_backend}", smtp_backend=f"127.0.0.1:{smtp_backend or 9}")
    cfg = copy.deepcopy(config_dict(pki, ports))
    cfg["workers"] = workers
    return cfg, ports


def with_flow_cert(cfg: dict[str, Any], pki: TestPki, flow: str, server: str) -> dict[str, Any]:
    """``cfg`` with flow ``flow`` serving the certificate and key of ``server`` (a test PKI server name)."""
    new = copy.deepcopy(cfg)
    new["flows"][flow]["certificate"] = str(pki.servers[server].chain)
    new["flows"][flow]["key"] = str(pki.servers[server].key)
    return new


def served_cn(pki: TestPki, port: int, *, starttls: str | None = "imap", sni: str | None = None) -> str:
    """The CN of the certificate ``openssl s_client`` is served (with a card, so the handshake completes)."""
    card = pki.cards["fort"]
    out = s_client(port, starttls=starttls, sni=sni, cert=card.chain, key=card.key, cafile=server_roots(pki))
    m = _CN.search(out)
    assert m is not None, f"no server certificate in s_client output:\n{out[-2000:]}"
    return m.group(1).strip()


def rewrite(proxy: ProxyProcess, cfg: dict[str, Any]) -> None:
    """Replace the running proxy's config file."""
    write_config(cfg, proxy.config)


def reload_and_wait(proxy: ProxyProcess, event: str = "reload", timeout: float = 20.0) -> dict[str, Any]:
    """SIGHUP the supervisor and wait for its next ``reload`` (or ``reload_failed``) event."""
    seen = len([e for e in proxy.events if e.get("event") == event])
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = [e for e in list(proxy.events) if e.get("event") == event]
        if len(evs) > seen:
            return evs[-1]
        if proxy.proc.poll() is not None:
            raise AssertionError(f"sniproxy exited {proxy.proc.returncode}:\n{proxy.log_text()[-4000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {event} event in {timeout}s:\n{proxy.log_text()[-4000:]}")


def worker_pids(proxy: ProxyProcess, count: int, timeout: float = 20.0) -> list[int]:
    """Pids of the workers' ``ready`` events, once ``count`` of them are (and ``serving`` is logged)."""
    proxy.wait_log("serving", timeout=timeout)
    pids = [int(e["pid"]) for e in list(proxy.events) if e.get("event") == "ready"]
    assert len(pids) >= count, proxy.log_text()
    return pids


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` every 50 ms up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_quietly(pids: list[int]) -> None:
    """SIGKILL leftovers so a failed test leaves no process behind."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
