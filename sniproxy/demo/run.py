"""``sniproxy demo``: the whole bi-flux story on one machine, on embedded defaults.

Generates the look-alike PKI, starts the built-in plaintext IMAP and SMTP backends, starts the
proxy (flows ``2bis`` and ``igcsante`` chosen by SNI) on local high ports, drives real client
connections through it, prints what happened, then keeps serving with commands to paste.
"""

from __future__ import annotations

import asyncio
import imaplib
import signal
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sniproxy.app import start_listeners
from sniproxy.config.load import load
from sniproxy.crl.manager import CrlManager
from sniproxy.crl.state import RevocationHolder
from sniproxy.demo.backend_base import MailStore
from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.crls import write_crls
from sniproxy.demo.imap_backend import DemoImapServer
from sniproxy.demo.pki import TestPki, build
from sniproxy.demo.smtp_backend import DemoSmtpServer
from sniproxy.driver.shared import OBSERVERS
from sniproxy.observability.log import configure
from sniproxy.runtime.snapshot import SnapshotHolder, compile_snapshot

USER = "alice@example.test"
PASSWORD = "demo"  # the built-in backend's demo password  # noqa: S105


@dataclass(frozen=True)
class Scenario:
    """One scripted client connection."""

    title: str
    proto: str            # imap | smtp | inject
    sni: str | None
    card: str | None


SCENARIOS = (
    Scenario("SMTP, IGC Santé name, Fort card, sends a mail", "smtp", "frontsmtp-igcsante.mssante.fr",
             "fort"),
    Scenario("IMAP, no SNI, IGC Santé Fort card", "imap", None, "fort"),
    Scenario("IMAP, legacy name, IGC CPS 2TER card", "imap", "frontimap.mssante.fr", "cps-2ter"),
    Scenario("IMAP, IGC Santé name, IGC CPS 2TER card", "imap", "frontimap-igcsante.mssante.fr", "cps-2ter"),
    Scenario("IMAP, Standard CPE card (Standard off)", "imap", "frontimap-igcsante.mssante.fr",
             "standard-cpe"),
    Scenario("IMAP, TEST chain card on production", "imap", "frontimap-igcsante.mssante.fr", "test-fort"),
    Scenario("IMAP, expired card", "imap", "frontimap.mssante.fr", "expired"),
    Scenario("IMAP, Fort card revoked in its CRL", "imap", "frontimap-igcsante.mssante.fr", "revoked"),
    Scenario("IMAP, no card", "imap", "frontimap.mssante.fr", None),
    Scenario("IMAP, command pipelined after STARTTLS", "inject", None, "fort"),
)


def _ctx(pki: TestPki, trust: Path, card: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.check_hostname = False
    if card is not None:
        ctx.load_cert_chain(str(pki.cards[card].chain), str(pki.cards[card].key))
    return ctx


def _peer_cn(sock: Any) -> str:
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    for rdn in (cert or {}).get("subject", ()):
        for attr in rdn:
            if attr[0] == "commonName":
                return str(attr[1])
    return "-"


def _run_client(sc: Scenario, pki: TestPki, trust: Path, ports: DemoPorts) -> tuple[str, str]:
    """Run one scenario; return (client-side result, server certificate CN)."""
    ctx = _ctx(pki, trust, sc.card)
    try:
        if sc.proto == "imap":
            assert ports.imap is not None
            m = imaplib.IMAP4("127.0.0.1", ports.imap, timeout=10)
            m.host = sc.sni or "127.0.0.1"
            m.starttls(ssl_context=ctx)
            cn = _peer_cn(m.sock)
            if "STARTTLS" in m.capabilities:  # the demo backend offers it; the proxy must hide it
                return "STARTTLS leaked through the proxy", cn
            m.login(USER, PASSWORD)
            _, data = m.select("INBOX")
            m.logout()
            count = data[0].decode() if isinstance(data[0], bytes) else "?"
            return f"logged in, INBOX has {count} message(s)", cn
        if sc.proto == "smtp":
            assert ports.smtp is not None
            s = smtplib.SMTP("127.0.0.1", ports.smtp, timeout=10)
            s.ehlo("demo")
            s._host = sc.sni or "127.0.0.1"  # type: ignore[attr-defined]
            s.starttls(context=ctx)
            cn = _peer_cn(s.sock)
            s.ehlo("demo")
            if s.has_extn("starttls"):
                return "STARTTLS leaked through the proxy", cn
            s.sendmail("bob@example.test", [USER], b"Subject: demo\r\n\r\nsent through sniproxy\r\n")
            s.quit()
            return "message accepted", cn
        assert ports.imap is not None
        with socket.create_connection(("127.0.0.1", ports.imap), timeout=10) as raw:
            raw.recv(1024)
            raw.sendall(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
            answer = raw.recv(1024)
            return ("connection closed" if not answer else answer.decode(errors="replace").strip()), "-"
    except (OSError, imaplib.IMAP4.error, smtplib.SMTPException) as exc:
        return f"refused: {type(exc).__name__}", "-"


async def _scenarios(pki: TestPki, trust: Path, ports: DemoPorts,
                     events: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for i, sc in enumerate(SCENARIOS, 1):
        before = len(events)
        result, cn = await asyncio.to_thread(_run_client, sc, pki, trust, ports)
        deadline = time.monotonic() + 5
        while len(events) == before and time.monotonic() < deadline:  # noqa: ASYNC110 - filled by a callback
            await asyncio.sleep(0.02)
        ev = events[before] if len(events) > before else {}
        rows.append([str(i), sc.title, sc.sni or "(none)", str(ev.get("flow") or "-"), cn,
                     str(ev.get("reason", "?")), result[:48]])
    return rows


def _table(rows: list[list[str]]) -> str:
    head = ["#", "scenario", "SNI", "flow", "server cert", "reason", "client saw"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))

    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)])


async def _demo(state: Path, serve: bool, base_port: int) -> int:
    pki = build(state / "pki")
    store = MailStore()
    imap_backend, smtp_backend = DemoImapServer(store), DemoSmtpServer(store)
    ib, sb = await imap_backend.start(), await smtp_backend.start()
    ports = DemoPorts(imap=base_port, smtp=base_port + 1, imaps=base_port + 2, smtps=base_port + 3,
                      imap_backend=f"127.0.0.1:{ib}", smtp_backend=f"127.0.0.1:{sb}")
    # CRLs for both card sets, as files (a deployment fetches them over HTTP or LDAP the same way).
    crls = write_crls(pki, state / "crl-published", ("igc-cps-2ter", "igc-sante-fort-pp"))
    cfg = write_config(config_dict(pki, ports, crls=crls, state_dir=state / "state"), state / "demo.yaml")
    config = load(cfg).config
    revocation = RevocationHolder()
    snapshot = compile_snapshot(config, revocation=revocation)
    crl = CrlManager(config, revocation)
    await crl.start()
    servers = await start_listeners(SnapshotHolder(snapshot))
    events: list[dict[str, Any]] = []
    OBSERVERS.append(events.append)
    trust = state / "pki" / "client-trust.pem"
    trust.write_bytes(b"".join(p.read_bytes() for s in ("igc-cps-2bis", "igc-sante-elementaire-org")
                               for p in pki.authorities[s].roots))
    print(f"sniproxy demo: config {cfg}, PKI {state / 'pki'}")
    print(f"proxy: IMAP STARTTLS :{ports.imap}, SMTP STARTTLS :{ports.smtp}, IMAPS :{ports.imaps}, "
          f"SMTPS :{ports.smtps}; built-in backends IMAP :{ib}, SMTP :{sb}\n")
    rows = await _scenarios(pki, trust, ports, events)
    print(_table(rows))
    code = 0 if all(r[5] != "?" for r in rows) else 1
    if serve:
        configure("info", "console")  # from now on, show each connection as it ends
        fort = pki.cards["fort"]
        print(f"""
Serving until Ctrl-C. Try (user {USER}, password {PASSWORD} on the demo backend):
  openssl s_client -connect 127.0.0.1:{ports.imap} -starttls imap -servername frontimap-igcsante.mssante.fr \\
      -cert {fort.cert} -key {fort.key} -CAfile {trust}
  curl --ssl-reqd --connect-to frontimap-igcsante.mssante.fr:{ports.imap}:127.0.0.1:{ports.imap} \\
      --cacert {trust} --cert {fort.cert} --key {fort.key} \\
      -u {USER}:{PASSWORD} 'imap://frontimap-igcsante.mssante.fr:{ports.imap}/INBOX;UID=1'
  openssl s_client -connect 127.0.0.1:{ports.imap} -starttls imap -noservername   # legacy 2BIS certificate
""")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    OBSERVERS.remove(events.append)
    for srv in servers:
        srv.close()
    await imap_backend.stop()
    await smtp_backend.stop()
    crl.close()
    return code


def main(state: Path, *, serve: bool = True, base_port: int = 18000) -> int:
    """Run the demo; returns the exit code."""
    configure("error", "console")  # the scripted run speaks through its table
    # Absolute: the config written there names its files, and a config's relative paths are read
    # against the config's own folder, not the current directory.
    return asyncio.run(_demo(state.resolve(), serve, base_port))
