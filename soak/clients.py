"""Real clients of the soak (stdlib imaplib, smtplib, http.client, ssl) bound to chosen source addresses.

Each driver connects from its own loopback address (127.0.X.Y), so the proxy's ``connection`` events
(``peer`` = address:port) are matched to the client attempt that made them.
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl
import threading
from typing import Any

from sniproxy.demo.pki import TestPki
from tests.integration.clients import client_context

TIMEOUT = 20.0
_ctx_lock = threading.Lock()
_contexts: dict[tuple[int, str | None], ssl.SSLContext] = {}


def context(pki: TestPki, card: str | None) -> ssl.SSLContext:
    """One client context per card, shared by every thread (wrapping a socket is thread-safe)."""
    key = (id(pki), card)
    with _ctx_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = client_context(pki, card)
        return ctx


def connect(port: int, src: str, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to the proxy from ``src``."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))


class Imap(imaplib.IMAP4):
    """imaplib from a chosen source address; ``tls`` wraps at once (imaps), SNI ``sni`` (None: none).

    ``sport`` is the local port as soon as the TCP connection exists (even if the greeting fails)."""

    def __init__(self, port: int, src: str, *, tls: ssl.SSLContext | None = None, sni: str | None = None,
                 record: dict[str, Any] | None = None) -> None:
        self._src, self._tls, self._sni, self._record = src, tls, sni, record
        super().__init__("127.0.0.1", port, timeout=TIMEOUT)
        if sni is not None:
            self.host = sni   # starttls() passes self.host as server_hostname: the SNI

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = connect(self.port, self._src, timeout or TIMEOUT)
        if self._record is not None:
            self._record["sport"] = sock.getsockname()[1]
        if self._tls is not None:
            return self._tls.wrap_socket(sock, server_hostname=self._sni)
        return sock


def imap_open(port: int, src: str, pki: TestPki, card: str | None, sni: str | None, implicit: bool,
              record: dict[str, Any]) -> Imap:
    """Connect and secure an IMAP session (implicit TLS or STARTTLS); raises what the client sees."""
    ctx = context(pki, card)
    if implicit:
        return Imap(port, src, tls=ctx, sni=sni, record=record)
    m = Imap(port, src, sni=sni, record=record)
    m.starttls(ssl_context=ctx)
    return m


def external(m: imaplib.IMAP4) -> None:
    """Proxy-side SASL EXTERNAL with no authorization identity: the card's mapped mailbox."""
    typ, data = m.authenticate("EXTERNAL", lambda _challenge: b"")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"EXTERNAL refused: {data!r}")


def smtp_open(port: int, src: str, pki: TestPki, card: str | None, sni: str | None, implicit: bool,
              record: dict[str, Any]) -> smtplib.SMTP:
    """Connect and secure an SMTP session, EHLO done (twice for STARTTLS)."""
    ctx = context(pki, card)
    raw = connect(port, src)
    record["sport"] = raw.getsockname()[1]
    try:
        sock = ctx.wrap_socket(raw, server_hostname=sni) if implicit else raw
    except BaseException:
        raw.close()
        raise
    s = smtplib.SMTP(timeout=TIMEOUT)
    s._host = sni  # type: ignore[attr-defined]  # smtplib passes self._host as server_hostname
    s.sock, s.file = sock, None   # what SMTP.connect does, on a socket bound to ``src``
    try:
        code, msg = s.getreply()
        if code != 220:
            raise smtplib.SMTPConnectError(code, msg)
        _ehlo(s)
        if not implicit:
            s.starttls(context=ctx)
            _ehlo(s)
    except BaseException:
        s.close()
        raise
    return s


def _ehlo(s: smtplib.SMTP) -> None:
    # smtplib's ehlo() returns a refusal (the proxy's 421 when Postfix is down) instead of raising it
    code, msg = s.ehlo("client.soak.test")
    if code != 250:
        raise smtplib.SMTPResponseException(code, msg)


def tls_socket(port: int, src: str, pki: TestPki, card: str | None, sni: str | None,
               record: dict[str, Any]) -> ssl.SSLSocket:
    """Implicit TLS from ``src``, handshake done."""
    raw = connect(port, src)
    record["sport"] = raw.getsockname()[1]
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return context(pki, card).wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed client or a middlebox does."""
    import struct

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
