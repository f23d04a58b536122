"""Issue 15 acceptance: real clients through a real proxy, then ``sniproxy report`` on the log it wrote.

Each client connects from its own loopback address, so addresses and no-SNI clients are countable. The
set: 2TER, IGC Santé Fort and Standard cards, with and without SNI, on both flows, on IMAP (Dovecot) and
SMTP (Postfix), two of them refused. The report must list exactly the holders and no-SNI clients driven.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import imaplib
import io
import json
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.conf import DemoPorts, config_dict
from sniproxy.demo.pki import TestPki
from tests.conftest import free_ports
from tests.integration.clients import client_context
from tests.integration.peers import Dovecot, Postfix
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration

IMAP_2BIS, IMAP_SANTE = "frontimap.mssante.fr", "frontimap-igcsante.mssante.fr"
SMTP_2BIS, SMTP_SANTE = "frontsmtp.mssante.fr", "frontsmtp-igcsante.mssante.fr"
CLIENT_ERRORS = (ssl.SSLError, OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, smtplib.SMTPException, EOFError)
StartProxy = Callable[[dict[str, Any]], ProxyProcess]

TWO_TER, FORT, LIBERAL, CPE = "810001234567", "810009876543", "810005556667", "30B0057881/CPET0099"

# (protocol, card, SNI, source address, served?)
CLIENTS: list[tuple[str, str, str | None, str, bool]] = [
    ("imap", "cps-2ter", IMAP_2BIS, "127.0.0.11", True),      # 2TER on the 2bis flow: blocks
    ("imap", "fort", IMAP_SANTE, "127.0.0.12", True),          # migrated
    ("imap", "fort-liberal", None, "127.0.0.13", True),        # no SNI: default flow 2bis, blocks
    ("smtp", "cps-2ter", SMTP_SANTE, "127.0.0.11", True),      # the 2TER holder, migrated on SMTP
    ("smtp", "fort", None, "127.0.0.14", True),                # no SNI on SMTP: blocks
    ("imap", "standard-cpe", IMAP_SANTE, "127.0.0.15", True),  # Standard card, migrated
    ("imap", "cps-2ter", IMAP_2BIS, "127.0.0.11", True),       # the 2TER holder again, later
    ("imap", "expired", IMAP_SANTE, "127.0.0.16", False),      # refused, on the new flow
    ("smtp", "unknown-ca", None, "127.0.0.17", False),         # refused, no SNI, no identity: an address
]


class _Imap(imaplib.IMAP4):
    def __init__(self, port: int, src: str) -> None:
        self._src = src
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self._src, 0))


def _drive(ports: DemoPorts, pki: TestPki, proto: str, card: str, sni: str | None, src: str) -> None:
    ctx = client_context(pki, card)
    if proto == "imap":
        assert ports.imap is not None
        m = _Imap(ports.imap, src)
        if sni is not None:
            m.host = sni           # imaplib sends self.host as the SNI
        else:
            m.host = "127.0.0.1"   # an IP literal: no SNI is sent
        try:
            m.starttls(ssl_context=ctx)
            m.noop()
            m.logout()
        finally:
            with contextlib.suppress(OSError):   # a refused card fails at the first read after the handshake
                m.shutdown()                     # (after logout the socket is already closed)
    else:
        assert ports.smtp is not None
        with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=10, source_address=(src, 0)) as s:
            s.ehlo("client.test")
            s._host = sni or "127.0.0.1"  # type: ignore[attr-defined]   # smtplib sends self._host as the SNI
            s.starttls(context=ctx)
            s.ehlo("client.test")


def _report(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sniproxy", "report", *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


@pytest.fixture
def proxy_log(pki: TestPki, dovecot: Dovecot, postfix: Postfix, start_proxy: StartProxy,
              tmp_path: Path) -> Path:
    """The JSON-lines log of a proxy that served exactly ``CLIENTS``."""
    imap, smtp = free_ports(2)
    ports = DemoPorts(imap=imap, smtp=smtp, imap_backend=f"127.0.0.1:{dovecot.imap_port}",
                      smtp_backend=f"127.0.0.1:{postfix.smtp_port}")
    proxy = start_proxy(config_dict(pki, ports, standard_enabled=True))
    for i, (proto, card, sni, src, served) in enumerate(CLIENTS, 1):
        try:
            _drive(ports, pki, proto, card, sni, src)
        except CLIENT_ERRORS as exc:
            if served:
                pytest.fail(f"client {card} on {proto} failed: {exc!r}; events {proxy.connection_events()}")
        # one at a time: the log's order (and "most recent first") is then the order above
        deadline = time.monotonic() + 10
        while len(proxy.connection_events()) < i and time.monotonic() < deadline:
            time.sleep(0.02)
    events = proxy.connection_events()
    assert len(events) == len(CLIENTS), events
    assert [e["outcome"] == "refused" for e in events] == [not c[4] for c in CLIENTS], events
    proxy.stop()
    log = tmp_path / "proxy.log"
    log.write_text(proxy.log_text() + "\n")
    return log


def _json(log_args: list[str], *extra: str, stdin: bytes | None = None) -> dict[str, Any]:
    r = _report(*log_args, "--format", "json", "--cutover-date", "2099-01-01", *extra, stdin=stdin)
    assert r.returncode == 0, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def _check(report: dict[str, Any]) -> None:
    t = report["totals"]
    assert t["connections"] == 9
    assert t["holders"] == 4                      # 2TER, Fort, liberal Fort, CPE; refused cards have no identity
    assert t["addresses"] == 7
    assert t["no_sni_clients"] == 3 and t["no_sni_connections"] == 3
    assert report["holders_by_pki"] == {"IGC Santé Fort": 2, "IGC CPS 2TER": 1, "IGC Santé Standard": 1}
    assert report["holders_by_card_type"] == {"CPS": 3, "CPE": 1}
    blockers = [(b["kind"], b["id"], b["why"], b["last_sni"], b["connections"], b["listener"])
                for b in report["blockers"]]
    assert blockers == [
        ("address", "127.0.0.17", "no SNI", None, 1, "smtp"),
        ("holder", TWO_TER, "legacy flow", IMAP_2BIS, 2, "imap"),
        ("holder", FORT, "no SNI", None, 1, "smtp"),
        ("holder", LIBERAL, "no SNI", None, 1, "imap"),
    ]
    g = {(x["listener"], x["flow"]): x for x in report["groups"]}
    assert set(g) == {("imap", "2bis"), ("imap", "igcsante"), ("smtp", "2bis"), ("smtp", "igcsante")}
    assert (g[("imap", "2bis")]["connections"], g[("imap", "2bis")]["holders"]) == (3, 2)
    assert g[("imap", "2bis")]["sni"] == {IMAP_2BIS: 2}
    assert g[("imap", "igcsante")]["refusals"] == {"expired": 1}
    assert g[("smtp", "2bis")]["refusals"] == {"unknown_ca": 1}
    assert g[("smtp", "2bis")]["no_sni_clients"] == 2
    assert g[("imap", "igcsante")]["pki"] == {"IGC Santé Fort": 1, "IGC Santé Standard": 1, "no verified card": 1}
    assert g[("smtp", "igcsante")]["tls_versions"] == {"TLSv1.3": 1}
    v = report["verdict"]
    assert v["would_break"] == 4 and v["holders"] == 3 and v["addresses"] == 1


def test_report_on_a_real_proxy_log(proxy_log: Path, tmp_path: Path) -> None:
    report = _json([str(proxy_log)])
    _check(report)
    assert report["input"]["malformed"] == 0

    # CSV parses and carries the same blockers
    r = _report(str(proxy_log), "--format", "csv")
    assert r.returncode == 0, r.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(r.stdout.decode())))
    assert [(x["kind"], x["key"]) for x in rows if x["section"] == "blocker"] == [
        ("address", "127.0.0.17"), ("holder", TWO_TER), ("holder", FORT), ("holder", LIBERAL)]
    assert {x["key"]: x["value"] for x in rows if x["section"] == "total"}["holders"] == "4"

    # two replicas' logs, one gzipped and holding a line cut by a rotation: same figures, one malformed line
    lines = proxy_log.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"connection"' in line and '"smtp"' in line)
    a, b = tmp_path / "pod-a.log", tmp_path / "pod-b.log.gz"
    a.write_text("".join(lines[:cut]) + '{"event": "connection", "timestamp": "2026-\n')
    b.write_bytes(gzip.compress("".join(lines[cut:]).encode()))
    merged = _json([str(b), str(a)])
    assert merged["input"]["malformed"] == 1
    assert merged["input"]["malformed_examples"] == [f"{a}:{cut + 1}"]
    merged.pop("input"), report.pop("input")
    merged.pop("generated"), report.pop("generated")
    assert merged == report

    # stdin, gzip, and the listener filter
    smtp_only = _json(["-", "--listener", "smtp"], stdin=gzip.compress(proxy_log.read_bytes()))
    assert smtp_only["totals"]["connections"] == 3
    assert [b["id"] for b in smtp_only["blockers"]] == ["127.0.0.17", FORT]

    # pseudonymized: no IdNat_PS nor name left
    r = _report(str(proxy_log), "--format", "html", "--pseudonymize")
    assert r.returncode == 0 and b"<svg" in r.stdout
    for raw in (TWO_TER, FORT, LIBERAL, "DUPONT"):
        assert raw.encode() not in r.stdout
