"""The per-connection driver: the one place where bytes meet the protocol dialogs and TLS.

Phases: PROXY header (from trusted load balancers only) -> pre-TLS dialog (STARTTLS listeners) ->
ClientHello (flow chosen from SNI) -> handshake with the flow's own context and card checks ->
backend connect, identity preamble (PROXY v2 header or XCLIENT dialog) and greeting -> relay.
Built on asyncio Protocols rather than streams because IMAP clients idle for hours and a
stream pair costs several times the memory (docs/decisions/0001-tls-engine.md). Timeouts are
timer handles, not tasks, for the same reason. Every end goes through ``_finish``, which logs
one ``connection`` event with a stable ``reason``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from sniproxy.auth.login import LoginDecision, decide
from sniproxy.config.model import Identity, Protocol
from sniproxy.config.names import peer_ip
from sniproxy.errors import Reason
from sniproxy.observability.log import get_logger
from sniproxy.observability.metrics import ACTIVE, CRL_GRACE_ACCEPTS, HANDSHAKES, connection_ended
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.clienthello import ClientHelloError, ClientHelloParser
from sniproxy.proto.identity_out import CardFacts, card_facts, proxy_v2_header
from sniproxy.proto.imap import ImapPreTls, imap_unavailable
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.imap_relay import ImapRelay
from sniproxy.proto.proxy_protocol import ProxyHeaderError, ProxyHeaderParser, looks_like_header
from sniproxy.proto.relay import MailRelay, Notice, RelayAction, ToBackend, ToClient
from sniproxy.proto.smtp import SmtpPreTls, smtp_unavailable
from sniproxy.proto.smtp_relay import SmtpRelay
from sniproxy.runtime.snapshot import ListenerRuntime, Snapshot, SnapshotHolder
from sniproxy.tls.identity import identity_fields, parse_identity
from sniproxy.tls.session import TlsFailure, TlsSession

_log = get_logger("sniproxy.connection")
_ids = itertools.count(1)
_PENDING_MAX = 65536          # plaintext held while the backend greets, before pausing the client
_WRITE_HIGH = 65536           # transport write buffer high-water mark, per direction
# A fatal unrecognized_name alert (RFC 8446 §6.2, alert 112), sent before any TLS state exists.
_ALERT_UNRECOGNIZED_NAME = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70])
_ALERT_HANDSHAKE_FAILURE = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28])

_PROXY, _PRETLS, _HELLO, _HANDSHAKE, _CONNECTING, _RELAY, _CLOSED = range(7)
# _ACCEPT only names the event of a connection that died in the accept queue: no code path compares it.
_ACCEPT = 7
_PHASE_NAMES = ("proxy_header", "pretls", "client_hello", "handshake", "backend_connect", "relay", "closed",
                "accept")


class Stats:
    """Process-wide counters: admission limits read them, tests and the ``stats`` event report them.

    ``pending`` counts connections not yet relaying (pre-TLS, handshake, backend connect): where a
    slowloris or a handshake flood sits. ``per_ip`` and ``pending_per_ip`` hold only addresses with
    at least one connection (entries are removed at zero, so the tables stay bounded by the limits).
    """

    __slots__ = ("accepted", "active", "by_reason", "pending", "pending_per_ip", "per_ip")

    def __init__(self) -> None:
        self.accepted = 0
        self.active = 0
        self.pending = 0
        self.per_ip: dict[str, int] = {}
        self.pending_per_ip: dict[str, int] = {}
        self.by_reason: dict[str, int] = {}

    def report(self) -> dict[str, Any]:
        """The counters as one event's fields."""
        return {"accepted": self.accepted, "active": self.active, "pending": self.pending,
                "client_addresses": len(self.per_ip), "pending_addresses": len(self.pending_per_ip),
                "by_reason": dict(self.by_reason)}


def _dec(table: dict[str, int], key: str) -> None:
    n = table.get(key, 0) - 1
    if n > 0:
        table[key] = n
    else:
        table.pop(key, None)


STATS = Stats()
# Every connection not yet finished, so a drain can say goodbye to each (a worker-wide set: one
# pointer per connection, no per-connection task).
LIVE: set[ClientConnection] = set()


class Drain:
    """Worker-wide drain state: set once by the worker's drain, read by connections."""

    active = False


_IMAP_PROTOCOLS = (Protocol.IMAP, Protocol.IMAPS)
_SMTP_PROTOCOLS = (Protocol.SMTP, Protocol.SMTPS)


def _is_idle_command(data: bytes) -> bool:
    """One whole ``<tag> IDLE`` command line (RFC 2177): clients send it as one small write.

    Only the last client chunk is looked at, so a session is "in IDLE" from that line until the
    client's next bytes (its ``DONE``): no IMAP parsing on the relay path.
    """
    return len(data) < 80 and data[-7:].upper() == b" IDLE\r\n" and data.count(b"\n") == 1
# Called with every connection event (the same dict that is logged). The demo and the metrics
# layer subscribe here; an observer must be quick and must not raise.
OBSERVERS: list[Callable[[dict[str, Any]], None]] = []


class _Backend(asyncio.Protocol):
    """The plaintext side; forwards everything to its owning client connection."""

    __slots__ = ("owner", "transport")

    def __init__(self, owner: ClientConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        # Attach now: the backend's greeting can arrive before create_connection's caller resumes.
        self.owner.backend_attached(self)

    def data_received(self, data: bytes) -> None:
        self.owner.backend_data(data)

    def eof_received(self) -> bool:
        self.owner.backend_closed(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.backend_closed(exc)

    def pause_writing(self) -> None:
        self.owner.pause_client_reading()

    def resume_writing(self) -> None:
        self.owner.resume_client_reading()


class ClientConnection(asyncio.Protocol):
    """One client connection through the proxy."""

    __slots__ = (
        "_auth",
        "_backend",
        "_bytes_in",
        "_bytes_out",
        "_card",
        "_client_addr",
        "_client_eof",
        "_connect_task",
        "_detail",
        "_dialog",
        "_flow",
        "_hello",
        "_hello_buf",
        "_hs_started",
        "_identity",
        "_idling",
        "_in_pending",
        "_ip",
        "_last_io",
        "_local_addr",
        "_lr",
        "_pending",
        "_pending_ip",
        "_pending_size",
        "_phase",
        "_proxy_parser",
        "_reading_paused",
        "_reason",
        "_relay",
        "_snapshot",
        "_sni",
        "_sniff",
        "_started",
        "_timer",
        "_tls",
        "_via",
        "id",
        "peer",
        "transport",
    )

    def __init__(self, holder: SnapshotHolder, listener: str) -> None:
        self._snapshot: Snapshot = holder.current          # pinned for the connection's life
        self._lr: ListenerRuntime = self._snapshot.listeners[listener]
        self.id = next(_ids)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._phase = _PRETLS
        self._dialog: ImapPreTls | SmtpPreTls | None = None
        self._hello: ClientHelloParser | None = None
        self._hello_buf = bytearray()
        self._tls: TlsSession | None = None
        self._flow: str | None = None
        self._sni: str | None = None
        self._identity: dict[str, str] | None = None
        self._backend: _Backend | None = None
        # Both directions of a mail session after TLS (IMAP or SMTP); None on raw TCP listeners.
        self._relay: MailRelay | None = None
        self._auth: list[dict[str, Any]] | None = None     # proxy-side login outcomes, for the event
        self._client_addr: tuple[str, int] = ("", 0)       # real client (from a PROXY header if any)
        self._local_addr: tuple[str, int] = ("", 0)        # where the client connected to
        self._via: str | None = None                       # the load balancer, when a header was read
        self._proxy_parser: ProxyHeaderParser | None = None
        # First bytes of a peer not trusted to send a PROXY header, until they prove they are none.
        # b"" (a shared singleton) rather than a bytearray: idle connections must stay small.
        self._sniff: bytes | None = None
        self._card: CardFacts | None = None
        self._in_pending = False               # counted in STATS.pending
        self._ip: str | None = None            # the address counted in STATS.per_ip
        self._pending_ip: str | None = None    # the address counted in STATS.pending_per_ip, until relaying
        self._connect_task: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._reading_paused = False
        self._client_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_io = 0.0
        self._bytes_in = 0
        self._bytes_out = 0
        self._started = 0.0
        self._hs_started = 0.0
        self._reason: Reason | None = None
        self._detail = ""
        self._idling = False                   # IMAP: the client's last line was IDLE (drain says BYE at once)

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if isinstance(peer, tuple):
            self._client_addr = (str(peer[0]), int(peer[1]))
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple):
            self._local_addr = (str(local[0]), int(local[1]))
        self._started = time.monotonic()
        LIVE.add(self)
        STATS.accepted += 1
        STATS.active += 1
        STATS.pending += 1
        self._in_pending = True
        if peer is None:
            # Reset while still in the kernel's accept queue: the socket has no peer any more. Without
            # this the event read peer "None", phase "pretls" and counted a greeting never delivered.
            self.peer = "unknown"
            self._phase = _ACCEPT
            self._finish(Reason.CLIENT_RESET, "reset in the accept queue")
            return
        ls = self._lr.listener
        ACTIVE.inc(ls.name, ls.protocol.value)
        if ls.proxy_protocol_from and self._trusted_balancer():
            # A trusted load balancer speaks first: nothing is sent until its header is read. Its
            # address is shared by every client behind it: per-address limits wait for the header.
            if self._admit(None):
                self._phase = _PROXY
                self._proxy_parser = ProxyHeaderParser()
                self._arm(ls.timeouts.handshake)
            return
        if self._admit(self._client_addr[0]):
            self._sniff = b""
            self._begin()

    def _admit(self, ip: str | None) -> bool:
        """Count this connection against the limits (``ip``: its client address); refuse it if over one."""
        limits = self._snapshot.config.limits
        if STATS.active > limits.max_connections:
            return self._shed(Reason.TOO_MANY_CONNECTIONS, f"{STATS.active - 1} connections in this worker")
        if STATS.pending > limits.max_pending:
            return self._shed(Reason.TOO_MANY_HANDSHAKES, f"{STATS.pending - 1} connections not yet relaying")
        return ip is None or self._admit_address(ip)

    def _admit_address(self, ip: str) -> bool:
        """The per-address limits (at accept, or once a trusted balancer's header names the client)."""
        limits = self._snapshot.config.limits
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
        ls = self._lr.listener
        if ls.protocol is Protocol.IMAP:
            self._write_raw(imap_unavailable("Too many connections, try again later"))
        elif ls.protocol is Protocol.SMTP:
            self._write_raw(f"421 4.7.0 {ls.hostname} Too many connections, try again later\r\n".encode())
        self._finish(reason, detail)
        return False

    def _leave_pending(self) -> None:
        """This connection is relaying, or over: it no longer counts as one in its handshake."""
        if self._in_pending:
            self._in_pending = False
            STATS.pending -= 1
        if self._pending_ip is not None:
            _dec(STATS.pending_per_ip, self._pending_ip)
            self._pending_ip = None

    def _trusted_balancer(self) -> bool:
        addr = peer_ip(self._client_addr[0])
        return addr is not None and any(addr in net for net in self._lr.listener.proxy_protocol_from)

    def _begin(self) -> None:
        """Start the client-facing protocol: the pre-TLS greeting, or wait for a ClientHello."""
        ls = self._lr.listener
        if ls.protocol is Protocol.IMAP:
            self._dialog = ImapPreTls(ls.hostname, ls.max_line, ls.max_pretls_commands)
        elif ls.protocol is Protocol.SMTP:
            self._dialog = SmtpPreTls(ls.hostname, ls.max_line, ls.max_pretls_commands)
        if self._dialog is not None:
            self._phase = _PRETLS
            self._arm(ls.timeouts.pretls)
            self._apply(self._dialog.greeting())
        else:
            self._start_hello()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase == _RELAY:
            self._finish(Reason.OK, "client closed")
        else:
            self._finish(Reason.CLIENT_RESET if exc else Reason.CLIENT_CLOSED, _PHASE_NAMES[self._phase])

    def eof_received(self) -> bool:
        try:
            return self._client_eof_received()
        except Exception as exc:  # see data_received
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self._finish(Reason.INTERNAL_ERROR, type(exc).__name__)
            return False

    def _client_eof_received(self) -> bool:
        if self._phase == _CONNECTING:
            # Keep what the client sent before its EOF; it reaches the backend once it is ready.
            self._client_eof = True
            return True
        bt = self._backend_transport()
        if self._phase == _RELAY and bt is not None and bt.can_write_eof():
            # Half-close: let the backend finish answering; the idle timer bounds the wait.
            bt.write_eof()
            return True
        self.connection_lost(None)
        return False

    def _backend_transport(self) -> asyncio.Transport | None:
        """The backend transport if it can still be written to (uvloop raises on a closed one)."""
        bt = self._backend.transport if self._backend is not None else None
        return None if bt is None or bt.is_closing() else bt

    def data_received(self, data: bytes) -> None:
        try:
            self._client_data(data)
        except Exception as exc:  # the one catch-all: a bug here must close this connection, not others
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self._finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def _client_data(self, data: bytes) -> None:
        self._bytes_in += len(data)
        self._last_io = time.monotonic()
        if self._phase == _PROXY:
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
                self._finish(Reason.UNTRUSTED_PROXY_HEADER, "PROXY header from a peer not in proxy_protocol_from")
                return
            self._sniff = None
        phase = self._phase
        if phase == _PRETLS:
            assert self._dialog is not None
            self._apply(self._dialog.receive_data(data))
        elif phase == _HELLO:
            self._client_hello(data)
        elif phase >= _HANDSHAKE and phase != _CLOSED:
            assert self._tls is not None
            self._tls.feed(data)
            if phase == _HANDSHAKE:
                self._step_handshake()
            else:
                self._read_plaintext()

    # ------------------------------------------------------------------ timers
    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == _RELAY:
            idle = self._lr.listener.timeouts.idle
            remaining = self._last_io + idle - time.monotonic()
            if remaining > 0:
                self._arm(remaining)
                return
            self._finish(Reason.TIMEOUT, "idle")
        else:
            self._finish(Reason.TIMEOUT, _PHASE_NAMES[self._phase])

    # ------------------------------------------------------------------ PROXY header in
    def _proxy_header(self, data: bytes) -> bytes:
        """Feed the trusted balancer's header; return the bytes after it once it is complete."""
        assert self._proxy_parser is not None
        try:
            result = self._proxy_parser.feed(data)
        except ProxyHeaderError as exc:
            self._finish(Reason.BAD_PROXY_HEADER, str(exc))
            return b""
        if result is None:
            return b""
        self._proxy_parser = None
        if result.src is not None and result.dst is not None:
            # From now on the client is the one the balancer names; the balancer is kept as ``via``.
            self._via = self.peer
            self._client_addr, self._local_addr = result.src, result.dst
            self.peer = f"{result.src[0]}:{result.src[1]}"   # same form as the socket's peer
        self._sniff = b""   # a second header, from the client behind the balancer, is a spoof
        if not self._admit_address(self._client_addr[0]):
            return b""
        self._begin()
        return result.rest if self._phase != _CLOSED else b""

    # ------------------------------------------------------------------ pre-TLS
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._write_raw(action.data)
            elif isinstance(action, StartTls):
                self._dialog = None
                self._start_hello()
            elif isinstance(action, Stop):
                self._finish(action.reason, action.detail)
                return

    def _start_hello(self) -> None:
        self._phase = _HELLO
        self._hello = ClientHelloParser()
        self._arm(self._lr.listener.timeouts.handshake)

    def _client_hello(self, data: bytes) -> None:
        assert self._hello is not None
        self._hello_buf += data
        try:
            info = self._hello.feed(data)
        except ClientHelloError as exc:
            self._finish(Reason.BAD_CLIENT_HELLO, str(exc))
            return
        if info is None:
            return
        self._hello = None
        self._sni = info.sni
        flow = self._lr.routes.choose(info.sni)
        if flow is None:
            self._write_raw(_ALERT_UNRECOGNIZED_NAME if info.sni else _ALERT_HANDSHAKE_FAILURE)
            self._finish(Reason.UNKNOWN_SNI, info.sni or "no SNI and no default flow")
            return
        self._flow = flow
        self._tls = TlsSession(self._snapshot.flows[flow])
        self._phase = _HANDSHAKE
        self._hs_started = time.monotonic()
        buf, self._hello_buf = bytes(self._hello_buf), bytearray()
        self._tls.feed(buf)
        self._step_handshake()

    # ------------------------------------------------------------------ TLS
    def _step_handshake(self) -> None:
        tls = self._tls
        assert tls is not None
        try:
            done = tls.handshake()
        except TlsFailure as exc:
            self._flush_tls()
            self._finish(exc.reason, exc.detail)
            return
        self._flush_tls()
        if not done:
            return
        HANDSHAKES.observe(self._lr.listener.name, self._flow or "", value=time.monotonic() - self._hs_started)
        leaf = tls.leaf
        if leaf is None and tls.flow.rules.require_cert:
            self._finish(Reason.NO_CLIENT_CERT, "session established without a verified card")
            return
        if leaf is not None:
            try:
                self._identity = identity_fields(parse_identity(leaf, tls.state.authority))
            except Exception as exc:  # a verified but odd certificate must not kill the connection
                self._identity = {"parse_error": type(exc).__name__}
            if self._lr.listener.backend.identity is Identity.PROXY_V2:   # only its header uses them
                try:
                    self._card = card_facts(leaf)
                except Exception:  # same: the backend then gets the SSL flags without the CN
                    self._card = CardFacts(cn=None, sig_alg=None, key_alg=None)
        if tls.state.crl_grace:
            CRL_GRACE_ACCEPTS.inc(tls.state.authority or "")
            _log.warning("crl_grace_accept", conn_id=self.id, flow=self._flow, authority=tls.state.authority,
                         stale_issuers=tls.state.crl_grace)
        # The parsed chain is no longer needed; IMAP connections idle for hours, so free it now.
        tls.state.chain.clear()
        self._after_handshake()

    def _after_handshake(self) -> None:
        """The card is verified: connect the backend (the HTTP driver overrides this)."""
        self._phase = _CONNECTING
        self._arm(self._lr.listener.timeouts.connect)
        self._connect_task = asyncio.get_running_loop().create_task(self._connect_backend())
        self._read_plaintext()  # bytes that came with the client's Finished

    def _flush_tls(self) -> None:
        if self._tls is not None:
            out = self._tls.outgoing()
            if out:
                self._write_raw(out)

    def _write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._bytes_out += len(data)
            self.transport.write(data)

    def _send_plain(self, data: bytes) -> None:
        assert self._tls is not None
        try:
            self._tls.write(data)
        except TlsFailure as exc:
            self._finish(exc.reason, exc.detail)
            return
        self._flush_tls()

    def _read_plaintext(self) -> None:
        assert self._tls is not None
        try:
            data, eof = self._tls.read()
        except TlsFailure as exc:
            self._flush_tls()
            self._finish(exc.reason, exc.detail)
            return
        self._flush_tls()
        if data:
            if self._phase == _RELAY:
                self._client_plaintext(data)
            else:
                self._pending.append(data)
                self._pending_size += len(data)
                if self._pending_size > _PENDING_MAX:
                    self.pause_client_reading()
        if eof:
            self._client_eof_received()

    def _client_plaintext(self, data: bytes) -> None:
        """Client plaintext during the relay: through the mail relay if any, else straight on."""
        if self._lr.listener.protocol in _IMAP_PROTOCOLS:
            self._idling = _is_idle_command(data)
            if self._idling and Drain.active:
                # Draining: answer a new IDLE with the goodbye rather than start hours of waiting.
                self.goodbye()
                return
        if self._relay is not None:
            self._relay_actions(self._relay.from_client(data))
            return
        bt = self._backend_transport()
        if bt is not None:
            bt.write(data)

    def _relay_actions(self, actions: list[RelayAction]) -> None:
        for action in actions:
            if self._phase == _CLOSED:
                return
            if isinstance(action, ToBackend):
                bt = self._backend_transport()
                if bt is not None:
                    bt.write(action.data)
            elif isinstance(action, ToClient):
                self._send_plain(action.data)
            elif isinstance(action, Notice):
                self._notice(action)
            elif isinstance(action, Stop):
                if action.reason in (Reason.BACKEND_PROTOCOL, Reason.BACKEND_REFUSED):
                    self._backend_failed(action.reason, action.detail)
                else:
                    self._finish(action.reason, action.detail)
                return

    def _notice(self, notice: Notice) -> None:
        """A login outcome or a refused client identity command: logged now and kept for the event."""
        fields = {"conn_id": self.id, "listener": self._lr.listener.name, "peer": self.peer, **notice.fields}
        if notice.event == "auth":
            # Allocated on first use: most connections never log in through the proxy.
            if self._auth is None:
                self._auth = []
            self._auth.append(dict(notice.fields))
        ok = notice.fields.get("result") == "ok"
        (_log.info if ok else _log.warning)(notice.event, **fields)

    def _decide(self, authzid: str) -> LoginDecision:
        login = self._lr.listener.backend.login
        assert login is not None
        return decide(login.rule, self._identity or {}, authzid)

    # ------------------------------------------------------------------ backend
    async def _connect_backend(self) -> None:
        ls = self._lr.listener
        backend = ls.backend
        loop = asyncio.get_running_loop()
        # The relay must exist before the first backend byte can arrive (see _Backend.connection_made).
        if ls.protocol in (Protocol.IMAP, Protocol.IMAPS):
            login, external = backend.login, None
            if login is not None and login.master_user and login.master_password:
                external = ImapExternal(decide=self._decide, master_user=login.master_user,
                                        master_password=login.master_password)
            self._relay = ImapRelay(consume_greeting=ls.protocol is Protocol.IMAP, login=external)
        elif ls.protocol in (Protocol.SMTP, Protocol.SMTPS):
            # Every SMTP session goes through the command filter, XCLIENT opening or not: a backend
            # that trusts this proxy for XCLIENT on one listener trusts it on all of them.
            xclient = backend.identity is Identity.XCLIENT
            self._relay = SmtpRelay(client_addr=self._client_addr, helo="", hostname=ls.hostname,
                                    consume_greeting=ls.protocol is Protocol.SMTP, xclient=xclient,
                                    decide=self._decide if xclient and backend.login is not None else None)
        try:
            _, proto = await loop.create_connection(
                lambda: _Backend(self), ls.backend.address.host, ls.backend.address.port)
        except OSError as exc:
            self._backend_failed(Reason.BACKEND_UNAVAILABLE, f"{ls.backend.address}: {exc.strerror or exc}")
            return
        except Exception as exc:  # never let a task exception escape to the loop's handler
            self._backend_failed(Reason.INTERNAL_ERROR, f"{ls.backend.address}: {type(exc).__name__}")
            return
        finally:
            self._connect_task = None
        if self._phase == _CONNECTING and self._relay is None and self._backend is proto:
            self._start_relay()  # raw TCP: nothing to wait for

    def backend_attached(self, backend: _Backend) -> None:
        """The backend connection exists (called from its ``connection_made``)."""
        if self._phase == _CLOSED:
            if backend.transport is not None:
                backend.transport.close()
            return
        self._backend = backend
        if self._lr.listener.backend.identity is Identity.PROXY_V2 and backend.transport is not None:
            # Before any other byte, and before the backend can greet (Dovecot waits for it).
            header = self._proxy_v2_header()
            if header is None:
                return
            backend.transport.write(header)

    def _proxy_v2_header(self) -> bytes | None:
        tls = self._tls
        assert tls is not None
        opts = self._lr.listener.backend.proxy_v2
        try:
            return proxy_v2_header(src=self._client_addr, dst=self._local_addr, sni=self._sni,
                                   tls_version=tls.version, cipher=tls.cipher, card=self._card,
                                   send_cn=opts.send_cn, identity=self._identity if opts.identity_tlvs else None,
                                   crc32c=opts.crc32c)
        except ValueError as exc:  # only an absurd SNI or CN can get here
            self._backend_failed(Reason.INTERNAL_ERROR, f"PROXY v2 header: {exc}")
            return None

    def _backend_failed(self, reason: Reason, detail: str) -> None:
        proto = self._lr.listener.protocol
        if self._tls is not None and self._tls.established:
            if proto in (Protocol.IMAP, Protocol.IMAPS):
                self._send_plain(imap_unavailable("Service temporarily unavailable"))
            elif proto in (Protocol.SMTP, Protocol.SMTPS):
                self._send_plain(smtp_unavailable("Service temporarily unavailable"))
        self._finish(reason, detail)

    def _start_relay(self) -> None:
        self._phase = _RELAY
        self._leave_pending()
        self._arm(self._lr.listener.timeouts.idle)
        bt = self._backend_transport()
        if bt is None:
            self._finish(Reason.OK, "backend closed")
            return
        if self._pending:
            pending = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._client_plaintext(pending)
            if self._phase == _CLOSED:
                return
        if self._client_eof:
            if bt.can_write_eof():
                bt.write_eof()
            return
        # Resume only if the flush did not itself fill the backend's buffer (its pause_writing
        # would otherwise be undone here).
        if bt.get_write_buffer_size() <= _WRITE_HIGH:
            self.resume_client_reading()

    def backend_data(self, data: bytes) -> None:
        """Bytes from the backend: filtered for mail protocols, then encrypted to the client."""
        try:
            self._backend_data(data)
        except Exception as exc:  # see data_received
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self._finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def _backend_data(self, data: bytes) -> None:
        self._last_io = time.monotonic()
        relay = self._relay
        if relay is None:
            self._send_plain(data)
            return
        self._relay_actions(relay.from_backend(data))
        if self._phase == _CONNECTING and relay.ready:
            self._start_relay()

    def backend_closed(self, exc: Exception | None) -> None:
        """The backend went away: end the client side cleanly (close_notify, then close)."""
        if self._phase == _CLOSED:
            return
        if self._phase == _CONNECTING:
            self._backend_failed(Reason.BACKEND_REFUSED, "closed before greeting")
            return
        if self._relay is not None and self._tls is not None:
            # What the client is still owed: an IMAP backend that went away without a BYE (Dovecot
            # stopping) is explained to it.
            self._relay_actions(self._relay.backend_closed())
        self._finish(Reason.OK, "backend closed" if exc is None else f"backend reset: {exc}")

    # ------------------------------------------------------------------ flow control
    def pause_writing(self) -> None:
        bt = self._backend_transport()
        if bt is not None:
            bt.pause_reading()

    def resume_writing(self) -> None:
        bt = self._backend_transport()
        if bt is not None:
            bt.resume_reading()

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
        """The worker started draining: say goodbye now where waiting cannot help (IMAP in IDLE)."""
        if self._phase == _RELAY and self._idling:
            self.goodbye()

    def goodbye(self) -> None:
        """End the session for a drain with the protocol's own goodbye, then close.

        IMAP ``* BYE [UNAVAILABLE]`` (RFC 9051 §7.1.5: the client reconnects), SMTP ``421 4.3.2``
        (RFC 3463: system not accepting messages); before TLS on a STARTTLS listener, in clear.
        """
        if self._phase == _CLOSED:
            return
        ls = self._lr.listener
        if ls.protocol in _IMAP_PROTOCOLS:
            msg = imap_unavailable("Server shutting down, please reconnect")
        elif ls.protocol in _SMTP_PROTOCOLS:
            msg = f"421 4.3.2 {ls.hostname} Service shutting down, try again later\r\n".encode()
        else:
            msg = b""
        if msg:
            if self._tls is not None and self._tls.established:
                self._send_plain(msg)
            elif self._phase == _PRETLS:
                self._write_raw(msg)
        self._finish(Reason.SHUTDOWN, "drain")

    # ------------------------------------------------------------------ end
    def _finish(self, reason: Reason, detail: str = "") -> None:
        if self._phase == _CLOSED:
            return
        LIVE.discard(self)
        phase = self._phase
        self._phase = _CLOSED
        self._reason, self._detail = reason, detail
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        if self._tls is not None and self._tls.established:
            self._tls.close_notify()
            out = self._tls.outgoing()
            if out:
                self._write_raw(out)
        if self.transport is not None:
            self.transport.close()
        if self._backend is not None and self._backend.transport is not None:
            self._backend.transport.close()
        STATS.active -= 1
        self._leave_pending()
        if self._ip is not None:
            _dec(STATS.per_ip, self._ip)
            self._ip = None
        STATS.by_reason[reason.value] = STATS.by_reason.get(reason.value, 0) + 1
        self._log_event(phase)

    def _event_fields(self) -> dict[str, Any]:
        """More fields for the ``connection`` event (the HTTP driver adds its request counts)."""
        return {}

    def _log_event(self, phase: int) -> None:
        reason = self._reason or Reason.INTERNAL_ERROR
        event: dict[str, Any] = {
            "conn_id": self.id,
            "listener": self._lr.listener.name,
            "peer": self.peer,
            "flow": self._flow,
            "sni": self._sni,
            "reason": reason.value,
            "phase": _PHASE_NAMES[phase],
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
            "duration_ms": round((time.monotonic() - self._started) * 1000, 1),
        }
        if self._detail:
            event["detail"] = self._detail
        tls = self._tls
        if tls is not None and tls.established:
            event["tls_version"] = tls.version
            event["cipher"] = tls.cipher
        if tls is not None and tls.state.authority:
            event["authority"] = tls.state.authority
        if tls is not None and tls.state.revoked is not None:
            rv = tls.state.revoked
            when = datetime.fromtimestamp(rv.date, UTC).isoformat() if rv.date is not None else None
            event["revocation"] = {"serial": f"{rv.serial:x}", "reason_code": rv.reason,
                                   "reason": rv.reason_name, "date": when}
        if tls is not None and tls.state.crl_grace:
            event["crl_grace"] = tls.state.crl_grace
        if self._identity:
            event["identity"] = self._identity
        if self._via is not None:
            event["via"] = self._via
        if self._auth:
            event["auth"] = self._auth
        event.update(self._event_fields())
        event["outcome"] = _outcome(reason)
        ls = self._lr.listener
        connection_ended(ls.name, ls.protocol.value, self._flow, event["outcome"], reason.value,
                         self._bytes_in, self._bytes_out)
        for observer in OBSERVERS:
            observer(event)
        log: Callable[..., None] = _log.info if event["outcome"] != "refused" else _log.warning
        log("connection", **event)


_NOT_REFUSALS = frozenset({Reason.OK, Reason.CLIENT_QUIT, Reason.CLIENT_CLOSED, Reason.CLIENT_RESET,
                           Reason.SHUTDOWN})


def _outcome(reason: Reason) -> str:
    """``ok`` for a served connection, ``closed`` when the client left early, else ``refused``."""
    if reason is Reason.OK:
        return "ok"
    return "closed" if reason in _NOT_REFUSALS else "refused"
