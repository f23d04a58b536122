"""Real clients used by the integration tests: stdlib ssl/imaplib/smtplib, openssl s_client, curl."""

from __future__ import annotations

import contextlib
import imaplib
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

from sniproxy.demo.pki import TestPki


def server_roots(pki: TestPki) -> Path:
    """One PEM with the roots of both operator server certificates (what a mail client trusts)."""
    dest = pki.root / "client-trust.pem"
    if not dest.exists():
        pems = [p.read_bytes() for s in ("igc-cps-2bis", "igc-sante-elementaire-org")
                for p in pki.authorities[s].roots]
        dest.write_bytes(b"".join(pems))
    return dest


def client_context(pki: TestPki, card: str | None) -> ssl.SSLContext:
    """A client context trusting the operator's server roots, presenting ``card`` if given."""
    ctx = ssl.create_default_context(cafile=str(server_roots(pki)))
    ctx.check_hostname = False  # tests connect to 127.0.0.1 and check the certificate CN themselves
    if card is not None:
        kp = pki.cards[card]
        ctx.load_cert_chain(str(kp.chain), str(kp.key))
    return ctx


def imap_starttls(port: int, pki: TestPki, card: str | None, sni: str | None,
                  host: str = "127.0.0.1", timeout: float = 10.0) -> imaplib.IMAP4:
    """IMAP STARTTLS through the proxy; ``sni=None`` sends no SNI (imaplib uses the IP then)."""
    m = imaplib.IMAP4(host, port, timeout=timeout)
    if sni is not None:
        m.host = sni  # imaplib passes self.host as server_hostname: that is the SNI sent
    try:
        m.starttls(ssl_context=client_context(pki, card))
    except BaseException:
        # a refused card fails after the handshake, at imaplib's next read: close what it left open
        with contextlib.suppress(OSError):
            m.shutdown()
        raise
    return m


def smtp_starttls(port: int, pki: TestPki, card: str | None, sni: str | None,
                  host: str = "127.0.0.1", timeout: float = 10.0) -> smtplib.SMTP:
    """SMTP STARTTLS through the proxy with the given card and SNI."""
    s = smtplib.SMTP(host, port, timeout=timeout)
    s.ehlo("client.test")
    if sni is not None:
        s._host = sni  # type: ignore[attr-defined]  # smtplib passes self._host as server_hostname
    try:
        s.starttls(context=client_context(pki, card))
        s.ehlo("client.test")
    except BaseException:
        s.close()   # a refused card fails at the first read after the handshake: close what smtplib left open
        raise
    return s


def tls_connect(port: int, pki: TestPki, card: str | None, sni: str | None,
                host: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    """Implicit TLS connection (imaps/smtps/tls listeners)."""
    raw = socket.create_connection((host, port), timeout=timeout)
    return client_context(pki, card).wrap_socket(raw, server_hostname=sni)


def s_client(port: int, *, starttls: str | None, sni: str | None, cert: Path | None = None,
             key: Path | None = None, cafile: Path | None = None, extra: list[str] | None = None,
             stdin: bytes = b"", timeout: float = 20.0) -> str:
    """Run ``openssl s_client`` and return stdout+stderr."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    if starttls:
        cmd += ["-starttls", starttls]
    cmd += ["-servername", sni] if sni else ["-noservername"]
    if cert and key:
        cmd += ["-cert", str(cert), "-key", str(key)]
    if cafile:
        cmd += ["-CAfile", str(cafile)]
    cmd += extra or []
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    return (r.stdout + r.stderr).decode(errors="replace")


def read_all(sock: socket.socket) -> bytes:
    """Everything a peer sends until it closes (or the socket times out or resets)."""
    out = b""
    try:
        while chunk := sock.recv(4096):
            out += chunk
    except OSError:
        pass
    return out
