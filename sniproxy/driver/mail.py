"""The byte-relay back half: IMAP and SMTP sessions (and ``tls``/``https`` listeners in mode tcp) to the backend.

Owns: the backend connection (``_Backend``), the identity preamble (a PROXY v2 header written before
any other byte, or the XCLIENT / proxy-side EXTERNAL dialogs of the ``proto/`` relays), waiting for the
backend's greeting, the relay in both directions with backpressure, the IMAP IDLE watch for drains,
and the protocol's "unavailable" answer when the backend fails. The relays of ``proto/`` are built in
``_open_relays`` and called only from the "relay calls" section below: the one place to change when
their vocabulary does.
Must not: touch the client socket or TLS: it writes to the client through ``FrontHalf.send_plain``,
changes phase through ``await_backend``/``enter_relay`` and ends through ``finish``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic
from typing import Any, cast

from sniproxy.auth.login import LoginDecision, decide
from sniproxy.card import identity_fields
from sniproxy.config.model import Identity, Listener, Protocol
from sniproxy.driver.halves import FrontHalf
from sniproxy.driver.shared import WRITE_HIGH, Drain
from sniproxy.errors import Reason
from sniproxy.observability.log import get_logger
from sniproxy.proto.identity_out import proxy_v2_header
from sniproxy.proto.imap import imap_unavailable
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.imap_relay import ImapRelay
from sniproxy.proto.relay import MailRelay, Notice, RelayAction, Stop, ToBackend, ToClient
from sniproxy.proto.smtp import smtp_unavailable
from sniproxy.proto.smtp_relay import SmtpRelay

_log = get_logger("sniproxy.connection")
_IMAP_PROTOCOLS = (Protocol.IMAP, Protocol.IMAPS)
_SMTP_PROTOCOLS = (Protocol.SMTP, Protocol.SMTPS)


def _discard(data: bytes) -> None:
    """Where backend bytes go once the connection finished."""


def is_idle_command(data: bytes) -> bool:
    """One whole ``<tag> IDLE`` command line (RFC 2177): clients send it as one small write.

    Only the last client chunk is looked at, so a session is "in IDLE" from that line until the
    client's next bytes (its ``DONE``): no IMAP parsing on the relay path.
    """
    return len(data) < 80 and data[-7:].upper() == b" IDLE\r\n" and data.count(b"\n") == 1


class _Backend(asyncio.Protocol):
    """The plaintext side; forwards everything to its back half."""

    __slots__ = ("owner", "transport")

    def __init__(self, owner: MailBack) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        # Attach now: the backend's greeting can arrive before create_connection's caller resumes.
        self.owner.backend_attached(self)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        try:
            owner._from_backend(data)
        except Exception as exc:  # as in the front's data_received: close this connection, not others
            owner.internal_error(exc)

    def eof_received(self) -> bool:
        self.owner.backend_closed(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.backend_closed(exc)

    def pause_writing(self) -> None:
        self.owner.front.pause_client_reading()

    def resume_writing(self) -> None:
        self.owner.front.resume_client_reading()


class MailBack:
    """The back half of one IMAP, SMTP or raw TCP connection (``driver.halves.BackHalf``)."""

    __slots__ = (
        "_auth",
        "_backend",
        "_closed",
        "_connect_task",
        "_connecting",
        "_from_backend",
        "_idling",
        "_imap",
        "_relay",
        "front",
    )

    def __init__(self, front: FrontHalf) -> None:
        self.front = front
        self._imap = front.lr.listener.protocol in _IMAP_PROTOCOLS
        self._backend: _Backend | None = None
        self._connect_task: asyncio.Task[None] | None = None
        # The mail relay of proto/ (see _open_relays): both directions of an IMAP or SMTP session; None
        # on raw TCP listeners.
        self._relay: MailRelay | None = None
        # Where backend bytes go, chosen once: through the relay, or straight on (raw TCP). Called by
        # _Backend.data_received, which catches what it raises.
        self._from_backend: Callable[[bytes], None] = self._plain_from_backend
        self._auth: list[dict[str, Any]] | None = None    # proxy-side login outcomes, for the event
        self._idling = False         # IMAP: the client's last line was IDLE (drain says BYE at once)
        self._connecting = False     # started, backend not yet greeted (the front's backend_connect)
        self._closed = False

    # ------------------------------------------------------------------ BackHalf
    def start(self) -> None:
        """Connect the backend; client plaintext waits in the front until it has greeted."""
        self._connecting = True
        self.front.await_backend()
        self._connect_task = asyncio.get_running_loop().create_task(self._connect())

    def client_data(self, data: bytes) -> None:
        """Client plaintext during the relay: through the mail relay if any, else straight on."""
        if self._imap:
            self._idling = idling = is_idle_command(data)
            if idling and Drain.active:
                # Draining: answer a new IDLE with the goodbye rather than start hours of waiting.
                self.front.goodbye()
                return
        relay = self._relay
        if relay is not None:
            self._relay_actions(relay.from_client(data))
            return
        backend = self._backend     # _writable(), inline: this is every client record's path
        bt = backend.transport if backend is not None else None
        if bt is not None and not bt.is_closing():
            bt.write(data)

    def client_eof(self) -> bool:
        """Half-close: let the backend finish answering; the idle timer bounds the wait."""
        bt = self._writable()
        if bt is not None and bt.can_write_eof():
            bt.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        """The client reads slowly: stop reading from the backend."""
        bt = self._writable()
        if bt is not None:
            bt.pause_reading()

    def resume_writing(self) -> None:
        """Read from the backend again."""
        bt = self._writable()
        if bt is not None:
            bt.resume_reading()

    def backend_timeout(self) -> None:
        """No backend greeting in time (one stopping, say): IMAP ``* BYE [UNAVAILABLE]``, SMTP 421, then close."""
        self._backend_failed(Reason.TIMEOUT, "backend_connect")

    def drain_begin(self) -> None:
        """Say goodbye now where waiting cannot help: a session in IMAP IDLE."""
        if self._idling:
            self.front.goodbye()

    def finish(self) -> None:
        """Stop connecting, close the backend."""
        self._closed = True
        self._connecting = False
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        if self._backend is not None and self._backend.transport is not None:
            self._backend.transport.close()
        # No reference cycle left (bound method, relay callbacks, backend protocol): the connection is
        # freed as soon as its transports let go of it, not at the next full garbage collection.
        self._backend = None
        self._relay = None
        self._from_backend = _discard

    def event_fields(self) -> dict[str, Any]:
        """The proxy-side login outcomes, if any."""
        return {"auth": self._auth} if self._auth else {}

    # ------------------------------------------------------------------ backend connection
    async def _connect(self) -> None:
        ls = self.front.lr.listener
        loop = asyncio.get_running_loop()
        # The relays must exist before the first backend byte can arrive (see _Backend.connection_made).
        self._open_relays(ls)
        try:
            _, proto = await loop.create_connection(lambda: _Backend(self), ls.backend.address.host,
                                                    ls.backend.address.port)
        except OSError as exc:
            self._backend_failed(Reason.BACKEND_UNAVAILABLE, f"{ls.backend.address}: {exc.strerror or exc}")
            return
        except Exception as exc:  # never let a task exception escape to the loop's handler
            self._backend_failed(Reason.INTERNAL_ERROR, f"{ls.backend.address}: {type(exc).__name__}")
            return
        finally:
            self._connect_task = None
        if self._connecting and self._relay is None and self._backend is proto:
            self._start_relay()  # raw TCP: nothing to wait for

    def backend_attached(self, backend: _Backend) -> None:
        """The backend connection exists (called from its ``connection_made``)."""
        if self._closed:
            if backend.transport is not None:
                backend.transport.close()
            return
        self._backend = backend
        if self.front.lr.listener.backend.identity is Identity.PROXY_V2 and backend.transport is not None:
            # Before any other byte, and before the backend can greet (Dovecot waits for it).
            header = self._proxy_v2_header()
            if header is None:
                return
            backend.transport.write(header)

    def _proxy_v2_header(self) -> bytes | None:
        front = self.front
        tls = front.tls
        assert tls is not None
        opts = front.lr.listener.backend.proxy_v2
        card = front.card
        try:
            return proxy_v2_header(src=front.client_addr, dst=front.local_addr, sni=front.sni,
                                   tls_version=tls.version, cipher=tls.cipher,
                                   card=card.facts if card is not None else None, send_cn=opts.send_cn,
                                   identity=identity_fields(card) if opts.identity_tlvs else None,
                                   crc32c=opts.crc32c)
        except ValueError as exc:  # only an absurd SNI or CN can get here
            self._backend_failed(Reason.INTERNAL_ERROR, f"PROXY v2 header: {exc}")
            return None

    def _backend_failed(self, reason: Reason, detail: str) -> None:
        front = self.front
        proto = front.lr.listener.protocol
        if front.tls is not None and front.tls.established:
            if proto in _IMAP_PROTOCOLS:
                front.send_plain(imap_unavailable("Service temporarily unavailable"))
            elif proto in _SMTP_PROTOCOLS:
                front.send_plain(smtp_unavailable("Service temporarily unavailable"))
        front.finish(reason, detail)

    def _start_relay(self) -> None:
        self._connecting = False
        front = self.front
        front.enter_relay()
        bt = self._writable()
        if bt is None:
            front.finish(Reason.OK, "backend closed")
            return
        pending = front.take_pending()
        if pending:
            self.client_data(pending)
            if self._closed:
                return
        if front.client_eof:
            if bt.can_write_eof():
                bt.write_eof()
            return
        # Resume only if the flush did not itself fill the backend's buffer (its pause_writing
        # would otherwise be undone here).
        if bt.get_write_buffer_size() <= WRITE_HIGH:
            front.resume_client_reading()

    def _writable(self) -> asyncio.Transport | None:
        """The backend transport if it can still be written to (uvloop raises on a closed one)."""
        bt = self._backend.transport if self._backend is not None else None
        return None if bt is None or bt.is_closing() else bt

    def internal_error(self, exc: Exception) -> None:
        """A bug met while handling backend bytes: logged, and this connection (only) ends."""
        _log.error("internal_error", conn_id=self.front.id, error=repr(exc), exc_info=True)
        self.front.finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def _plain_from_backend(self, data: bytes) -> None:
        front = self.front
        front.last_io = monotonic()
        front.send_plain(data)

    def backend_closed(self, exc: Exception | None) -> None:
        """The backend went away: end the client side cleanly (close_notify, then close)."""
        if self._closed:
            return
        if self._connecting:
            self._backend_failed(Reason.BACKEND_REFUSED, "closed before greeting")
            return
        relay = self._relay
        if relay is not None and self.front.tls is not None:
            # What the client is still owed: an IMAP backend that went away without a BYE (Dovecot
            # stopping) is told why.
            self._relay_actions(relay.backend_closed())
        self.front.finish(Reason.OK, "backend closed" if exc is None else f"backend reset: {exc}")

    # ------------------------------------------------------------------ relay calls
    def _open_relays(self, ls: Listener) -> None:
        """The dialogs between client and backend for this listener, built once before the backend connects."""
        backend = ls.backend
        if self._imap:
            login, external = backend.login, None
            if login is not None and login.master_user and login.master_password:
                external = ImapExternal(decide=self._decide, master_user=login.master_user,
                                        master_password=login.master_password)
            self._relay = ImapRelay(consume_greeting=ls.protocol is Protocol.IMAP, login=external)
            self._from_backend = self._relay_from_backend
        elif ls.protocol in _SMTP_PROTOCOLS:
            # Every SMTP session goes through the command filter, XCLIENT opening or not: a backend
            # that trusts this proxy for XCLIENT on one listener trusts it on all of them.
            xclient = backend.identity is Identity.XCLIENT
            self._relay = SmtpRelay(
                client_addr=self.front.client_addr, helo="", hostname=ls.hostname,
                consume_greeting=ls.protocol is Protocol.SMTP, xclient=xclient,
                decide=self._decide if xclient and backend.login is not None else None)
            self._from_backend = self._relay_from_backend

    def _relay_from_backend(self, data: bytes) -> None:
        self.front.last_io = monotonic()
        relay = self._relay
        assert relay is not None
        self._relay_actions(relay.from_backend(data))
        if self._connecting and relay.ready:
            self._start_relay()

    def _relay_actions(self, actions: list[RelayAction]) -> None:
        for action in actions:
            if self._closed:
                return
            if isinstance(action, ToBackend):
                bt = self._writable()
                if bt is not None:
                    bt.write(action.data)
            elif isinstance(action, ToClient):
                self.front.send_plain(action.data)
            elif isinstance(action, Notice):
                self._notice(action)
            elif isinstance(action, Stop):
                if action.reason in (Reason.BACKEND_PROTOCOL, Reason.BACKEND_REFUSED):
                    self._backend_failed(action.reason, action.detail)
                else:
                    self.front.finish(action.reason, action.detail)
                return

    def _notice(self, notice: Notice) -> None:
        """A login outcome or a refused client identity command: logged now and kept for the event."""
        front = self.front
        fields = {"conn_id": front.id, "listener": front.lr.listener.name, "peer": front.peer, **notice.fields}
        if notice.event == "auth":
            # Allocated on first use: most connections never log in through the proxy.
            if self._auth is None:
                self._auth = []
            self._auth.append(dict(notice.fields))
        ok = notice.fields.get("result") == "ok"
        (_log.info if ok else _log.warning)(notice.event, **fields)

    def _decide(self, authzid: str) -> LoginDecision:
        login = self.front.lr.listener.backend.login
        assert login is not None
        return decide(login.rule, identity_fields(self.front.card), authzid)
