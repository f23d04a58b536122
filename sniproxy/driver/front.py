"""The front half of every connection: from accept to the verified card, then the hand-over.

Phases (``shared.PHASE_NAMES``): PROXY header (from trusted load balancers only) -> pre-TLS dialog
(STARTTLS listeners) -> ClientHello (flow chosen from SNI) -> handshake with the flow's own context
and card checks -> hand-over to the listener mode's back half (``back_half``), which connects its
backend and relays. The front keeps the client socket and the TLS session to the end: back halves
write to the client through ``send_plain`` and end the connection through ``finish``, which logs the
one ``connection`` event with a stable ``reason``.
Built on asyncio Protocols rather than streams because IMAP clients idle for hours and a stream pair
costs several times the memory (docs/decisions/0001-tls-engine.md). Timeouts are timer handles, not
tasks, for the same reason.
Must not: know how a backend is spoken to (that is the back halves'), or import their private names.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from time import monotonic
from typing import cast

from sniproxy.card import CardIdentity, UnreadableCard
from sniproxy.config.model import Protocol
from sniproxy.driver.event import log_connection
from sniproxy.driver.halves import FINISHED, RAW_PROTOCOLS, BackHalf, farewell, no_plaintext, refusal
from sniproxy.driver.http import HttpBack, serves_http
from sniproxy.driver.mail import MailBack
from sniproxy.driver.shared import (
    ACCEPT,
    BACKEND_CONNECT,
    CLIENT_HELLO,
    CLOSED,
    HANDSHAKE,
    LIVE,
    PENDING_MAX,
    PHASE_NAMES,
    PRETLS,
    PROXY_HEADER,
    RELAY,
    STATS,
    WRITE_HIGH,
    card_of,
    decrement,
)
from sniproxy.errors import Reason
from sniproxy.observability.log import get_logger
from sniproxy.observability.metrics import ACTIVE, CRL_GRACE_ACCEPTS, HANDSHAKES
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.clienthello import ClientHelloError, ClientHelloParser
from sniproxy.proto.imap import ImapPreTls
from sniproxy.proto.netaddr import peer_ip
from sniproxy.proto.proxy_protocol import ProxyHeaderParser, looks_like_header
from sniproxy.proto.proxy_wire import ProxyHeaderError
from sniproxy.proto.smtp import SmtpPreTls
from sniproxy.runtime.snapshot import ListenerRuntime, Snapshot, SnapshotHolder
from sniproxy.tls.session import GROWN, INBOX, RELEASE_DUE, TlsFailure, TlsSession

_log = get_logger("sniproxy.connection")
_ids = itertools.count(1)
# A fatal unrecognized_name alert (RFC 8446 §6.2, alert 112), sent before any TLS state exists.
_ALERT_UNRECOGNIZED_NAME = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70])
_ALERT_HANDSHAKE_FAILURE = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])
# Seconds after a big chunk before TlsSession.release_buffers: at most one swap a second during a bulk transfer.
RELEASE_AFTER = 1.0


def back_half(front: ClientConnection) -> BackHalf:
    """The back half for the front's listener: HTTP for ``https`` in mode ``http``, else the byte relay."""
    if serves_http(front.lr.listener):
        return HttpBack(front)
    return MailBack(front)


class ClientConnection(asyncio.BufferedProtocol):
    """One client connection through the proxy (every listener, every mode); uvloop reads into ``INBOX``."""

    __slots__ = (
        "_back",
        "_dialog",
        "_hello",
        "_hello_buf",
        "_hs_started",
        "_in_pending",
        "_ip",
        "_pending",
        "_pending_ip",
        "_pending_size",
        "_phase",
        "_proxy_parser",
        "_reading_paused",
        "_sniff",
        "_timer",
        "_to_back",
        "bytes_in",
        "bytes_out",
        "card",
        "client_addr",
        "client_eof",
        "detail",
        "flow",
        "id",
        "last_io",
        "local_addr",
        "lr",
        "peer",
        "reason",
        "snapshot",
        "sni",
        "started",
        "tls",
        "transport",
        "via",
    )

    def __init__(self, holder: SnapshotHolder, listener: str) -> None:
        self.snapshot: Snapshot = holder.current          # pinned for the connection's life
        self.lr: ListenerRuntime = self.snapshot.listeners[listener]
        self.id = next(_ids)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._phase = PRETLS
        self._dialog: ImapPreTls | SmtpPreTls | None = None
        self._hello: ClientHelloParser | None = None
        self._hello_buf = bytearray()
        self.tls: TlsSession | None = None
        self.flow: str | None = None
        self.sni: str | None = None
        self.card: CardIdentity | UnreadableCard | None = None   # read once, at the end of the handshake
        self.client_addr: tuple[str, int] = ("", 0)       # real client (from a PROXY header if any)
        self.local_addr: tuple[str, int] = ("", 0)        # where the client connected to
        self.via: str | None = None                       # the load balancer, when a header was read
        self._proxy_parser: ProxyHeaderParser | None = None
        # First bytes of a peer not trusted to send a PROXY header, until they prove they are none.
        # b"" (a shared singleton) rather than a bytearray: idle connections must stay small.
        self._sniff: bytes | None = None
        self._in_pending = False               # counted in STATS.pending
        self._ip: str | None = None            # the address counted in STATS.per_ip
        self._pending_ip: str | None = None    # the address counted in STATS.pending_per_ip, until relaying
        self._pending: list[bytes] = []        # client plaintext before the back half relays
        self._pending_size = 0
        self._reading_paused = False
        self.client_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self.last_io = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = 0.0
        self._hs_started = 0.0
        self.reason: Reason | None = None
        self.detail = ""
        # Made at accept: its event fields (the HTTP mode's) belong to every event of its listener.
        self._back: BackHalf = back_half(self)
        # Where decrypted client plaintext goes: held in backend_connect, the back half's in relay. A
        # slot rather than a test of the phase: one attribute load per record.
        self._to_back: Callable[[bytes], None] = no_plaintext

    # ------------------------------------------------------------------ accept and admission
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if isinstance(peer, tuple):
            self.client_addr = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            self.local_addr = (str(local[0]), int(local[1]))
        self.started = monotonic()
        LIVE.add(self)
        STATS.accepted += 1
        STATS.active += 1
        STATS.pending += 1
        self._in_pending = True
        if peer is None:
            # Reset while still in the kernel's accept queue: the socket has no peer any more. Without
            # this the event read peer "None", phase "pretls" and counted a greeting never delivered.
            self.peer = "unknown"
            self._phase = ACCEPT
            self.finish(Reason.CLIENT_RESET, "reset in the accept queue")
            return
        ls = self.lr.listener
        ACTIVE.inc(ls.name, ls.protocol.value)
        if ls.proxy_protocol_from and self._trusted_balancer():
            # A trusted load balancer speaks first: nothing is sent until its header is read. Its
            # address is shared by every client behind it: per-address limits wait for the header.
            if self._admit(None):
                self._phase = PROXY_HEADER
                self._proxy_parser = ProxyHeaderParser()
                self._arm(ls.timeouts.handshake)
            return
        if self._admit(self.client_addr[0]):
            self._sniff = b""
            self._begin()

    def _admit(self, ip: str | None) -> bool:
        """Count this connection against the limits (``ip``: its client address); refuse it if over one."""
        limits = self.snapshot.config.limits
        if STATS.active > limits.max_connections:
            return self._shed(Reason.TOO_MANY_CONNECTIONS, f"{STATS.active - 1} connections in this worker")
        if STATS.pending > limits.max_pending:
            return self._shed(Reason.TOO_MANY_HANDSHAKES, f"{STATS.pending - 1} connections not yet relaying")
        return ip is None or self._admit_address(ip)

    def _admit_address(self, ip: str) -> bool:
        """The per-address limits (at accept, or once a trusted balancer's header names the client)."""
        limits = self.snapshot.config.limits
        self._ip = self._pending_ip = ip
        STATS.per_ip[ip] = per_ip = STATS.per_ip.get(ip, 0) + 1
        STATS.pending_per_ip[ip] = pending_ip = STATS.pending_per_ip.get(ip, 0) + 1
        if per_ip > limits.max_per_ip:
            return self._shed(Reason.TOO_MANY_FROM_IP, f"{per_ip - 1} connections from {ip}")
        if pending_ip > limits.max_pending_per_ip:
            return self._shed(Reason.TOO_MANY_FROM_IP, f"{pending_ip - 1} connections from {ip} not yet relaying")
        return True

    def _shed(self, reason: Reason, detail: str) -> bool:
        """Refuse at once, in the listener's protocol when it speaks first: shed load, never queue it."""
        if msg := refusal(self.lr.listener):
            self._write_raw(msg)
        self.finish(reason, detail)
        return False

    def _leave_pending(self) -> None:
        """This connection is relaying, or over: it no longer counts as one in its handshake."""
        if self._in_pending:
            self._in_pending = False
            STATS.pending -= 1
        if self._pending_ip is not None:
            decrement(STATS.pending_per_ip, self._pending_ip)
            self._pending_ip = None

    def _trusted_balancer(self) -> bool:
        addr = peer_ip(self.client_addr[0])
        return addr is not None and any(addr in net for net in self.lr.listener.proxy_protocol_from)

    def _begin(self) -> None:
        """Start the client-facing protocol: the pre-TLS greeting, or wait for a ClientHello."""
        ls = self.lr.listener
        if ls.protocol is Protocol.IMAP:
            self._dialog = ImapPreTls(ls.hostname, ls.max_line, ls.max_pretls_commands)
        elif ls.protocol is Protocol.SMTP:
            self._dialog = SmtpPreTls(ls.hostname, ls.max_line, ls.max_pretls_commands)
        if self._dialog is not None:
            self._phase = PRETLS
            self._arm(ls.timeouts.pretls)
            self._apply(self._dialog.greeting())
        else:
            self._start_hello()

    # ------------------------------------------------------------------ client socket events
    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase == RELAY:
            self.finish(Reason.OK, "client closed")
        else:
            self.finish(Reason.CLIENT_RESET if exc else Reason.CLIENT_CLOSED, PHASE_NAMES[self._phase])

    def eof_received(self) -> bool:
        try:
            return self._client_eof_received()
        except Exception as exc:  # see data_received
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self.finish(Reason.INTERNAL_ERROR, type(exc).__name__)
            return False

    def _client_eof_received(self) -> bool:
        if self._phase == BACKEND_CONNECT:
            # Keep what the client sent before its EOF; it reaches the backend once it is ready.
            self.client_eof = True
            return True
        if self._phase == RELAY and self._back.client_eof():
            return True   # the back half keeps the socket open to finish what it owes
        self.connection_lost(None)
        return False

    def data_received(self, data: bytes) -> None:
        try:
            if self._phase == RELAY:   # the relay's path, first and short: every record after the handshake
                self.bytes_in += len(data)
                self.last_io = monotonic()
                self._read_plaintext(data)
            else:
                self._client_data(data)
        except Exception as exc:  # the one catch-all: a bug here must close this connection, not others
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self.finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def get_buffer(self, sizehint: int) -> bytearray:
        return cast(bytearray, INBOX)    # a cffi buffer: writable, as a bytearray is

    def buffer_updated(self, nbytes: int) -> None:
        """uvloop read ``nbytes`` into ``INBOX``: decrypted from there in the relay, else copied out as bytes."""
        try:
            if self._phase == RELAY:
                self.bytes_in += nbytes
                self.last_io = monotonic()
                self._read_plaintext(b"", nbytes)
            else:
                self._client_data(INBOX[:nbytes])
        except Exception as exc:  # as in data_received
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self.finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def _client_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_io = monotonic()
        if self._phase == PROXY_HEADER:
            rest = self._proxy_header(data)
            if not rest:
                return
            data = rest
        if self._sniff is not None:
            # Never believe a client: a PROXY header from a peer outside proxy_protocol_from is refused.
            data = self._sniff + data if self._sniff else data
            verdict = looks_like_header(data[:12])
            if verdict is None:
                self._sniff = data      # fewer than 12 bytes: a prefix of a signature
                return
            if verdict:
                self.finish(Reason.UNTRUSTED_PROXY_HEADER, "PROXY header from a peer not in proxy_protocol_from")
                return
            self._sniff = None
        phase = self._phase
        if phase == PRETLS:
            assert self._dialog is not None
            self._apply(self._dialog.receive_data(data))
        elif phase == CLIENT_HELLO:
            self._client_hello(data)
        elif phase == HANDSHAKE:
            self._step_handshake(data)
        elif phase == BACKEND_CONNECT or phase == RELAY:   # (relay takes data_received's short path)
            self._read_plaintext(data)

    # ------------------------------------------------------------------ timers
    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == RELAY:
            if self.tls is not None and self.tls.grown:
                self.tls.release_buffers()
            remaining = self.last_io + self.lr.listener.timeouts.idle - monotonic()
            if remaining > 0:
                self._arm(remaining)
                return
            self.finish(Reason.TIMEOUT, "idle")
        elif self._phase == BACKEND_CONNECT:
            self._back.backend_timeout()   # the client is told in its protocol, as for a refusing backend
        else:
            self.finish(Reason.TIMEOUT, PHASE_NAMES[self._phase])

    # ------------------------------------------------------------------ PROXY header in
    def _proxy_header(self, data: bytes) -> bytes:
        """Feed the trusted balancer's header; return the bytes after it once it is complete."""
        assert self._proxy_parser is not None
        try:
            result = self._proxy_parser.feed(data)
        except ProxyHeaderError as exc:
            self.finish(Reason.BAD_PROXY_HEADER, str(exc))
            return b""
        if result is None:
            return b""
        self._proxy_parser = None
        if result.src is not None and result.dst is not None:
            # From now on the client is the one the balancer names; the balancer is kept as ``via``.
            self.via = self.peer
            self.client_addr, self.local_addr = result.src, result.dst
            self.peer = f"{result.src[0]}:{result.src[1]}"   # same form as the socket's peer
        self._sniff = b""   # a second header, from the client behind the balancer, is a spoof
        if not self._admit_address(self.client_addr[0]):
            return b""
        self._begin()
        return result.rest if self._phase != CLOSED else b""

    # ------------------------------------------------------------------ pre-TLS and ClientHello
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._write_raw(action.data)
            elif isinstance(action, StartTls):
                self._dialog = None
                self._start_hello()
            elif isinstance(action, Stop):
                self.finish(action.reason, action.detail)
                return

    def _start_hello(self) -> None:
        self._phase = CLIENT_HELLO
        self._hello = ClientHelloParser()
        self._arm(self.lr.listener.timeouts.handshake)

    def _client_hello(self, data: bytes) -> None:
        assert self._hello is not None
        self._hello_buf += data
        try:
            info = self._hello.feed(data)
        except ClientHelloError as exc:
            self.finish(Reason.BAD_CLIENT_HELLO, str(exc))
            return
        if info is None:
            return
        self._hello = None
        self.sni = info.sni
        flow = self.lr.routes.choose(info.sni)
        if flow is None:
            self._write_raw(_ALERT_UNRECOGNIZED_NAME if info.sni else _ALERT_HANDSHAKE_FAILURE)
            self.finish(Reason.UNKNOWN_SNI, info.sni or "no SNI and no default flow")
            return
        self.flow = flow
        self.tls = TlsSession(self.snapshot.flows[flow])
        self._phase = HANDSHAKE
        self._hs_started = monotonic()
        buf, self._hello_buf = bytes(self._hello_buf), bytearray()
        self._step_handshake(buf)

    # ------------------------------------------------------------------ handshake and card
    def _step_handshake(self, data: bytes = b"") -> None:
        tls = self.tls
        assert tls is not None
        tls.feed(data)     # (nothing to do for b"")
        try:
            done = tls.handshake()
        except TlsFailure as exc:
            self._flush_tls()
            self.finish(exc.reason, exc.detail)
            return
        self._flush_tls()
        if not done:
            return
        HANDSHAKES.observe(self.lr.listener.name, self.flow or "", value=monotonic() - self._hs_started)
        leaf = tls.leaf
        if leaf is None and tls.flow.rules.require_cert:
            self.finish(Reason.NO_CLIENT_CERT, "session established without a verified card")
            return
        if leaf is not None:
            self.card = card_of(leaf, tls.state.authority)     # every consumer takes its values from it
        if tls.state.crl_grace:
            CRL_GRACE_ACCEPTS.inc(tls.state.authority or "")
            _log.warning("crl_grace_accept", conn_id=self.id, flow=self.flow, authority=tls.state.authority,
                         stale_issuers=tls.state.crl_grace)
        # The parsed chain is no longer needed; IMAP connections idle for hours, so free it now.
        tls.state.chain.clear()
        # The card is verified: the back half takes over (bytes that came with the client's Finished next).
        self._back.start()
        self._read_plaintext()
        if self._phase != CLOSED:
            # The BIOs grew to the handshake's flights: most connections now wait, some for hours.
            tls.release_buffers()

    # ------------------------------------------------------------------ the hand-over (FrontHalf)
    def await_backend(self) -> None:
        """Enter ``backend_connect``: client plaintext is held until ``enter_relay``."""
        self._phase = BACKEND_CONNECT
        self._to_back = self._hold
        self._arm(self.lr.listener.timeouts.connect)

    def enter_relay(self) -> None:
        """Enter ``relay``: no longer a handshake in progress (limits.max_pending); the idle timer runs."""
        self._phase = RELAY
        self._to_back = self._back.client_data
        if self.tls is not None:        # a raw relay's backend transport takes bulk plaintext as memoryviews
            self.tls.views = self.lr.listener.protocol in RAW_PROTOCOLS and not serves_http(self.lr.listener)
        self._leave_pending()
        self._arm(self.lr.listener.timeouts.idle)
        if self.tls is not None and self.tls.grown == GROWN:
            self._release_soon(self.tls)

    def _release_soon(self, tls: TlsSession) -> None:
        """A big chunk went through the TLS session: the idle timer fires early to release its buffers."""
        tls.grown = RELEASE_DUE
        self._arm(min(RELEASE_AFTER, self.lr.listener.timeouts.idle))

    def _hold(self, data: bytes) -> None:
        """Client plaintext before the relay: kept for the back half; too much stops reading the client."""
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > PENDING_MAX:
            self.pause_client_reading()

    def take_pending(self) -> bytes:
        """The client plaintext held before ``enter_relay`` (then forgotten)."""
        pending = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return pending

    # ------------------------------------------------------------------ TLS and the client socket
    def _flush_tls(self) -> None:
        if self.tls is not None and (out := self.tls.outgoing()):
            self._write_raw(out)

    def _write_raw(self, data: bytes | memoryview) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.bytes_out += len(data)
            transport.write(data)

    def send_plain(self, data: bytes) -> None:
        """Encrypt ``data`` to the client (a TLS failure finishes the connection)."""
        tls = self.tls
        assert tls is not None
        try:
            out = tls.encrypt(data)
        except TlsFailure as exc:
            self.finish(exc.reason, exc.detail)
            return
        transport = self.transport      # _write_raw, inline: this is every backend read's path
        if out and transport is not None and not transport.is_closing():
            self.bytes_out += len(out)
            transport.write(out)
        if tls.grown == GROWN and self._phase == RELAY:
            self._release_soon(tls)

    def _read_plaintext(self, data: bytes = b"", inbox: int = 0) -> None:
        """Feed ``data`` (or ``inbox`` bytes of ``INBOX``) to the TLS session, then hand what it decrypts on."""
        tls = self.tls
        assert tls is not None
        try:
            plain, eof = tls.read_inbox(inbox) if inbox else tls.read(data)
        except TlsFailure as exc:
            self._flush_tls()
            self.finish(exc.reason, exc.detail)
            return
        if out := tls.outgoing():   # nearly always nothing (a KeyUpdate's answer, say)
            self._write_raw(out)
        if plain:   # a memoryview only with tls.views (enter_relay): the raw relay writes it as it is
            self._to_back(cast(bytes, plain))
        if eof:
            self._client_eof_received()
        if tls.grown == GROWN and self._phase == RELAY:
            self._release_soon(tls)

    def pause_writing(self) -> None:
        self._back.pause_writing()

    def resume_writing(self) -> None:
        self._back.resume_writing()

    def pause_client_reading(self) -> None:
        """Stop reading from the client (backend slow, or plaintext piling up before the relay)."""
        if not self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_client_reading(self) -> None:
        """Read from the client again."""
        if self._reading_paused and self.transport is not None and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ drain
    def drain_begin(self) -> None:
        """The worker started draining: the back half ends now what waiting cannot help (IMAP IDLE)."""
        if self._phase == RELAY:
            self._back.drain_begin()

    def goodbye(self) -> None:
        """End the session for a drain with the protocol's own goodbye (``halves.farewell``), then close.

        Before TLS on a STARTTLS listener, in clear.
        """
        if self._phase == CLOSED:
            return
        if msg := farewell(self.lr.listener):
            if self.tls is not None and self.tls.established:
                self.send_plain(msg)
            elif self._phase == PRETLS:
                self._write_raw(msg)
        self.finish(Reason.SHUTDOWN, "drain")

    # ------------------------------------------------------------------ end
    def finish(self, reason: Reason, detail: str = "") -> None:
        """End the connection (idempotent): back half first, close_notify, counters, the event."""
        if self._phase == CLOSED:
            return
        LIVE.discard(self)
        phase = self._phase
        self._phase = CLOSED
        self.reason, self.detail = reason, detail
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._back.finish()
        if self.tls is not None and self.tls.established:
            self.tls.close_notify()
            self._flush_tls()
        if self.transport is not None:
            self.transport.close()
        STATS.active -= 1
        self._leave_pending()
        if self._ip is not None:
            decrement(STATS.per_ip, self._ip)
            self._ip = None
        STATS.by_reason[reason.value] = STATS.by_reason.get(reason.value, 0) + 1
        log_connection(self, PHASE_NAMES[phase], self._back.event_fields())
        self._back, self._to_back = FINISHED, no_plaintext   # unlinked (halves.Finished): no cycle left
