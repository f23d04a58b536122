"""The per-connection driver of ``https`` listeners in mode ``http``: a strict HTTP/1.1 reverse proxy.

Everything up to and including the card check is ``ClientConnection``'s (PROXY header in,
ClientHello, flow by SNI, handshake with the flow's context, revocation); this subclass takes over
at ``_after_handshake``. Requests are served one at a time and in order: the sans-IO
``ClientSide`` delimits, checks and parses them, ``http_rewrite`` decides what the backend sees,
and each request goes to a backend connection from a small per-backend pool, a ``BackendExchange``
framing it again (so the backend never sees the client's framing) and parsing the response with
llhttp. Bodies stream both ways with backpressure: a full backend write buffer stops reading from
the client, a full client write buffer stops reading from the backend. A request the proxy refuses
(400, 403, 421) or cannot serve (502, 504) gets its answer, with a SOAP fault body when the request was SOAP, and the
connection closes; ``_finish`` then logs the one ``connection`` event with its reason.
"""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from typing import Any, cast

from sniproxy.config.model import Address, HttpOptions
from sniproxy.connection import _CLOSED, _PENDING_MAX, _RELAY, _WRITE_HIGH, ClientConnection, Drain
from sniproxy.errors import Reason
from sniproxy.observability.log import get_logger
from sniproxy.proto.http_backend import (
    BackendExchange,
    Informational,
    RequestError,
    ResponseBody,
    ResponseEnd,
    ResponseHead,
)
from sniproxy.proto.http_rewrite import (
    BadRequest,
    Headers,
    StripRules,
    TlsFacts,
    check_fields,
    identity_headers,
    misdirected,
    needs_card,
    request_host,
    soap_version,
    strip_identity,
    without_hop_by_hop,
)
from sniproxy.proto.http_server import (
    BodyReceived,
    ClientClosed,
    ClientSide,
    Event,
    RequestEnded,
    RequestRefused,
    RequestStarted,
)
from sniproxy.runtime.snapshot import SnapshotHolder

_log = get_logger("sniproxy.http")


@lru_cache(maxsize=64)
def _strip_rules(opts: HttpOptions) -> StripRules:
    # Built once per listener config (HttpOptions is frozen and hashable).
    return StripRules.build((name for _, name in opts.card_headers), opts.strip)


class _BackendConn(asyncio.Protocol):
    """One plaintext HTTP connection to the backend, owned by one client connection at a time."""

    __slots__ = ("closed", "owner", "paused", "pool", "transport")

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.owner: HttpsConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.backend_data(data)
        else:  # an idle backend must not speak: never hand this connection out again
            self.close()

    def eof_received(self) -> bool:
        self._lost(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        if self.owner is not None:
            self.owner.backend_closed(exc)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.backend_full(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.backend_full(False)

    def write(self, data: bytes) -> None:
        """Send bytes unless the connection is already closing."""
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Close for good (never back to the pool)."""
        self.closed = True
        self.owner = None
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()


class BackendPool:
    """Idle keep-alive connections to one backend, at most ``max_idle``, each closed after
    ``idle_timeout`` unused (a backend's own keep-alive timeout may be shorter: keep this lower)."""

    __slots__ = ("_idle", "_timers", "address", "idle_timeout", "max_idle")

    def __init__(self, address: Address, max_idle: int, idle_timeout: float) -> None:
        self.address = address
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: list[_BackendConn] = []
        self._timers: dict[int, asyncio.TimerHandle] = {}

    @property
    def idle(self) -> int:
        """Idle connections kept now."""
        return len(self._idle)

    def take(self) -> _BackendConn | None:
        """The most recently used idle connection still open, or None."""
        while self._idle:
            conn = self._idle.pop()
            timer = self._timers.pop(id(conn), None)
            if timer is not None:
                timer.cancel()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def give(self, conn: _BackendConn) -> None:
        """Return a connection whose last exchange ended cleanly; closed if the pool is full."""
        conn.owner = None
        if conn.paused and conn.transport is not None:
            conn.transport.resume_reading()   # an idle backend closing must be noticed
            conn.paused = False
        if conn.closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        self._idle.append(conn)
        loop = asyncio.get_running_loop()
        self._timers[id(conn)] = loop.call_later(self.idle_timeout, conn.close)

    def forget(self, conn: _BackendConn) -> None:
        """Drop a closed connection from the idle list."""
        if conn in self._idle:
            self._idle.remove(conn)
        timer = self._timers.pop(id(conn), None)
        if timer is not None:
            timer.cancel()

    async def connect(self, owner: HttpsConnection, seconds: float) -> _BackendConn:
        """A new connection, owned by ``owner``. Raises ``OSError`` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds):
            _, proto = await loop.create_connection(lambda: _BackendConn(self), self.address.host,
                                                    self.address.port)
        proto.owner = owner
        return proto


_POOLS: dict[tuple[str, str], BackendPool] = {}


def pool_for(listener: str, address: Address, opts: HttpOptions) -> BackendPool:
    """The process-wide pool of one listener's backend (kept across config snapshots of the same address)."""
    key = (listener, str(address))
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = BackendPool(address, opts.pool_max_idle, opts.pool_idle_timeout)
    return pool


class HttpsConnection(ClientConnection):
    """One client connection of an ``https`` listener in mode ``http``."""

    __slots__ = (
        "_bk",
        "_bk_full",
        "_bk_opened",
        "_bk_out",
        "_bk_pending",
        "_bk_task",
        "_chain_der",
        "_ex",
        "_http",
        "_id_cache",
        "_opts",
        "_pool",
        "_req_method",
        "_resp_started",
        "_resp_status",
        "_resp_timer",
        "_soap",
        "_statuses",
        "_stripped",
    )

    def __init__(self, holder: SnapshotHolder, listener: str) -> None:
        super().__init__(holder, listener)
        opts = self._lr.listener.http
        self._opts: HttpOptions = opts if opts is not None else HttpOptions()
        self._http: ClientSide | None = None
        self._pool = pool_for(self._lr.listener.name, self._lr.listener.backend.address, self._opts)
        self._bk: _BackendConn | None = None
        self._bk_task: asyncio.Task[None] | None = None
        self._bk_pending: list[bytes] | None = None      # request bytes while the backend connects
        self._bk_full = False
        self._req_method = b""             # of the request in progress: HEAD responses are never pooled
        self._resp_status = 0
        self._bk_opened = 0                # backend connections this client caused to be opened
        self._bk_out: list[bytes] = []     # bytes for the backend, written once per batch of client events
        self._ex: BackendExchange | None = None   # the request/response exchange in progress
        self._chain_der: tuple[bytes, ...] = ()
        self._id_cache: tuple[bytes | None, Headers] | None = None
        self._resp_started = False
        self._resp_timer: asyncio.TimerHandle | None = None
        self._soap: str | None = None
        self._statuses: dict[str, int] = {}
        self._stripped = 0

    # ------------------------------------------------------------------ after the handshake
    def _after_handshake(self) -> None:
        tls = self._tls
        assert tls is not None
        if self._card is not None:   # a verified card (its parsed chain is already freed)
            self._chain_der = tuple(tls.verified_chain_der())
        self._http = ClientSide(self._opts.max_request_line, self._opts.max_header_bytes)
        self._phase = _RELAY
        self._leave_pending()   # serving requests: no longer a handshake in progress (limits.max_pending)
        self._arm(self._lr.listener.timeouts.idle)
        self._read_plaintext()

    def _client_plaintext(self, data: bytes) -> None:
        assert self._http is not None
        self._events(self._http.receive_data(data))

    def _client_eof_received(self) -> bool:
        if self._phase != _RELAY or self._http is None:
            self.connection_lost(None)
            return False
        self._events(self._http.receive_data(b""))
        return True   # keep the socket open to finish a response still owed

    # ------------------------------------------------------------------ client events
    def _events(self, events: list[Event]) -> None:
        # A batch holds at most one request (the next waits for this response). When its framing
        # breaks within the bytes already here, refuse before anything of it reaches the backend.
        refused = next((e for e in events if isinstance(e, RequestRefused)), None)
        if refused is not None:
            events = [refused]
        for event in events:
            if self._phase == _CLOSED:
                return
            if isinstance(event, RequestStarted):
                self._start_request(event)
            elif isinstance(event, (BodyReceived, RequestEnded)):
                ex = self._ex
                if ex is None:   # its head was refused: nothing of it goes to the backend
                    continue
                try:
                    out = ex.body(event.data) if isinstance(event, BodyReceived) else ex.end()
                except RequestError as exc:   # a body the head it came with cannot carry
                    self._finish(Reason.BAD_REQUEST, f"request body cannot be forwarded: {exc}")
                    return
                self._to_backend(out)
                if isinstance(event, RequestEnded):
                    self._arm_response_timer()
            elif isinstance(event, RequestRefused):
                self._refuse(event.status, event.detail, event.soap, Reason.BAD_REQUEST)
            elif isinstance(event, ClientClosed):
                if event.mid_request:
                    self._finish(Reason.CLIENT_CLOSED, "client closed in the middle of a request")
                else:
                    self._finish(Reason.OK, "client closed")
        self._flush_backend()
        self._update_reading()

    def _start_request(self, req: RequestStarted) -> None:
        self._soap = soap_version(req.headers)
        self._resp_started = False
        self._req_method = req.method.upper()
        self._resp_status = 0
        self._ex = None
        try:
            host = request_host(req.target, req.headers)
            plain_headers = without_hop_by_hop(req.headers)
        except BadRequest as exc:
            self._refuse(400, "bad request", self._soap, Reason.BAD_REQUEST, detail=str(exc))
            return
        other = misdirected(host, self._lr.routes, self._flow or "")
        if other is not None:
            self._refuse(421, f"{host} is served by another flow than this connection's", self._soap,
                         Reason.MISDIRECTED_REQUEST, detail=f"host {host} is flow {other}, SNI chose {self._flow}")
            return
        if not self._chain_der and needs_card(req.target, self._opts.card_required_paths):
            self._refuse(403, "a professional card is required for this service", self._soap, Reason.CARD_REQUIRED,
                         detail=f"no card for {req.target[:200].decode('latin-1')}")
            return
        headers, removed = strip_identity(plain_headers, _strip_rules(self._opts))
        self._stripped += removed
        if req.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        try:
            headers += self._identity_headers(req.headers)
        except BadRequest as exc:   # a card value no HTTP field can carry
            self._refuse(400, "request cannot be forwarded", self._soap, Reason.BAD_REQUEST, detail=str(exc))
            return
        bk = self._pool.take()
        if bk is not None:
            bk.owner = self
            self._bk = bk
        else:
            self._bk_pending = []
            self._bk_opened += 1
            self._bk_task = asyncio.get_running_loop().create_task(self._connect())
        ex = BackendExchange()
        try:
            # the method, target and client fields come from h11's parser, the identity fields passed
            # check_fields: the head is written as it is, with our framing
            data = ex.request(req.method, req.target, headers, chunked=req.chunked)
        except RequestError as exc:  # a head we accepted in but will not write out (no Host in HTTP/1.0)
            self._refuse(400, "request cannot be forwarded", self._soap, Reason.BAD_REQUEST, detail=str(exc))
            return
        self._ex = ex
        self._to_backend(data)
        _log.debug("http_request", conn_id=self.id, method=req.method.decode("latin-1"),
                   target=req.target[:200].decode("latin-1"), stripped=removed, reused=bk is not None)

    def _identity_headers(self, headers: Headers) -> Headers:
        host = next((v for n, v in headers if n == b"host"), None)
        if self._id_cache is not None and self._id_cache[0] == host:
            return list(self._id_cache[1])
        tls = self._tls
        assert tls is not None
        facts = TlsFacts(client_ip=self._client_addr[0], client_port=self._client_addr[1],
                         host=host.decode("latin-1") if host else None, tls_version=tls.version,
                         cipher=tls.cipher, cipher_bits=tls.cipher_bits, session_id=tls.session_id,
                         chain_der=self._chain_der, card=self._card)
        out = identity_headers(self._opts.headers, facts, self._opts.card_headers)
        check_fields(out)
        self._id_cache = (host, out)
        return list(out)

    def _to_backend(self, data: bytes | None) -> None:
        if data:
            self._bk_out.append(data)

    def _flush_backend(self) -> None:
        """One write per batch: head, body pieces and the end of a small request go out together."""
        if not self._bk_out:
            return
        data = b"".join(self._bk_out)
        self._bk_out.clear()
        if self._phase == _CLOSED:
            return
        self._last_io = time.monotonic()
        if self._bk is not None:
            self._bk.write(data)
        elif self._bk_pending is not None:
            self._bk_pending.append(data)

    async def _connect(self) -> None:
        try:
            bk = await self._pool.connect(self, self._lr.listener.timeouts.connect)
        except TimeoutError:
            self._bk_task = None
            self._backend_error(504, Reason.BACKEND_TIMEOUT, f"connect to {self._pool.address}: timeout")
            return
        except OSError as exc:
            self._bk_task = None
            self._backend_error(502, Reason.BACKEND_UNAVAILABLE,
                                f"{self._pool.address}: {exc.strerror or exc}")
            return
        except Exception as exc:  # never let a task exception escape to the loop's handler
            self._bk_task = None
            self._backend_error(502, Reason.INTERNAL_ERROR, f"{self._pool.address}: {type(exc).__name__}")
            return
        self._bk_task = None
        if self._phase == _CLOSED:
            bk.close()
            return
        self._bk = bk
        pending, self._bk_pending = self._bk_pending or [], None
        bk.write(b"".join(pending))
        self._update_reading()

    def _arm_response_timer(self) -> None:
        if self._resp_timer is not None:
            self._resp_timer.cancel()
        if not self._resp_started:
            loop = asyncio.get_running_loop()
            self._resp_timer = loop.call_later(self._opts.response_timeout, self._response_timeout)

    def _response_timeout(self) -> None:
        self._resp_timer = None
        if not self._resp_started and self._phase != _CLOSED:
            self._backend_error(504, Reason.BACKEND_TIMEOUT,
                                f"no response head in {self._opts.response_timeout:g} s")

    # ------------------------------------------------------------------ backend events
    def backend_data(self, data: bytes) -> None:
        """Bytes from the current backend connection."""
        try:
            self._backend_bytes(data)
        except Exception as exc:  # the one catch-all, as in ClientConnection.data_received
            _log.error("internal_error", conn_id=self.id, error=repr(exc), exc_info=True)
            self._finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def _backend_bytes(self, data: bytes) -> None:
        bk = self._bk
        ex = self._ex
        if bk is None or ex is None or self._http is None or self._phase == _CLOSED:
            return
        self._last_io = time.monotonic()
        # Plaintext for the client, encrypted and written once per read (head, body and end together).
        out: list[bytes] = []
        for event in ex.receive_data(data):
            if self._phase == _CLOSED or self._bk is not bk:
                return
            if isinstance(event, ResponseBody):
                out.append(self._http.body(event.data))
            elif isinstance(event, ResponseHead):
                self._resp_status = event.status
                out.append(self._response_head(event))
            elif isinstance(event, ResponseEnd):
                self._response_end(bk, out, event.reusable)
                return
            elif isinstance(event, Informational):
                # 100 Continue (and 103) relayed; a 101 cannot happen: Upgrade is never forwarded.
                if event.status in (100, 103) and not self._resp_started:
                    out.append(self._http.informational(event.status, []))
            else:   # ResponseBroken
                self._flush_client(out)
                self._backend_error(502, Reason.BACKEND_PROTOCOL, event.detail)
                return
        self._flush_client(out)

    def _flush_client(self, out: list[bytes]) -> None:
        if out and self._phase != _CLOSED:
            self._send_plain(b"".join(out))

    def _response_head(self, event: ResponseHead) -> bytes:
        assert self._http is not None
        if self._resp_timer is not None:
            self._resp_timer.cancel()
            self._resp_timer = None
        self._resp_started = True
        key = str(event.status)
        self._statuses[key] = self._statuses.get(key, 0) + 1
        headers = without_hop_by_hop(event.headers, strict=False)
        if Drain.active:
            # Draining: this response is the connection's last; the client opens a new one elsewhere.
            headers.append((b"connection", b"close"))
        return self._http.response(event.status, headers, event.reason)

    def _response_end(self, bk: _BackendConn, out: list[bytes], reusable: bool) -> None:
        assert self._http is not None
        end, keep = self._http.end()
        out.append(end)
        self._flush_client(out)
        self._bk = None
        self._bk_full = False   # a pause of this backend's writes no longer concerns this client
        # Pool only a connection with nothing left over: bytes after the end of a response (a body
        # sent on HEAD/204/304, or anything extra) would be read as the next client's response.
        self._ex = None
        if (reusable and self._req_method != b"HEAD" and self._resp_status not in (204, 304)
                and bk.transport is not None and bk.transport.get_write_buffer_size() == 0):
            self._pool.give(bk)
        else:
            bk.close()
        if self._phase == _CLOSED:
            return
        if not keep:
            self._finish(Reason.OK, "response ended the connection")
            return
        self._events(self._http.next_request())

    def backend_closed(self, exc: Exception | None) -> None:
        """The current backend connection went away."""
        bk = self._bk
        if bk is None or self._phase == _CLOSED:
            return
        # A response framed by the connection's end (HTTP/1.0 style) completes only now.
        self._backend_bytes(b"")
        if self._bk is bk and self._phase != _CLOSED:
            self._bk = None
            what = "reset" if exc is not None else "closed"
            self._backend_error(502, Reason.BACKEND_PROTOCOL, f"backend {what} before the response ended")

    def backend_full(self, full: bool) -> None:
        """The backend's write buffer crossed its high (or back under its low) water mark."""
        self._bk_full = full
        self._update_reading()

    def _backend_error(self, status: int, reason: Reason, detail: str) -> None:
        if self._bk is not None:
            self._bk.close()
            self._bk = None
        self._refuse(status, "the service is unavailable" if status == 502 else "the service did not answer in time",
                     self._soap, reason, detail=detail)

    # ------------------------------------------------------------------ answers and flow control
    def _refuse(self, status: int, message: str, soap: str | None, reason: Reason, detail: str = "") -> None:
        """Answer ``status`` ourselves (unless a response is already on its way) and close."""
        if self._phase == _CLOSED:
            return
        key = str(status)
        if self._http is not None and not self._resp_started:
            self._statuses[key] = self._statuses.get(key, 0) + 1
            self._send_plain(self._http.error(status, message, soap))
        self._finish(reason, detail or message)

    def _update_reading(self) -> None:
        """Read from the client only while what it sends has somewhere to go."""
        http = self._http
        pending = sum(len(b) for b in self._bk_pending) if self._bk_pending else 0
        stop = self._bk_full or pending > _PENDING_MAX or (
            http is not None and http.waiting and http.buffered > self._opts.max_header_bytes)
        if stop:
            self.pause_client_reading()
        else:
            self.resume_client_reading()

    def pause_writing(self) -> None:
        # The client's write buffer is full: stop reading the response from the backend.
        bk = self._bk
        if bk is not None and bk.transport is not None and not bk.transport.is_closing():
            bk.paused = True
            bk.transport.pause_reading()

    def resume_writing(self) -> None:
        bk = self._bk
        if bk is not None and bk.paused and bk.transport is not None and not bk.transport.is_closing():
            bk.paused = False
            bk.transport.resume_reading()

    # ------------------------------------------------------------------ drain
    def drain_begin(self) -> None:
        """Between requests a keep-alive connection owes nothing: close it now (RFC 9112 §9.6)."""
        if (self._phase == _RELAY and self._http is not None and self._bk is None and self._bk_task is None
                and not self._http.waiting and self._http.buffered == 0):
            self._finish(Reason.SHUTDOWN, "drain")

    # ------------------------------------------------------------------ end
    def _finish(self, reason: Reason, detail: str = "") -> None:
        if self._phase == _CLOSED:
            return
        if self._resp_timer is not None:
            self._resp_timer.cancel()
            self._resp_timer = None
        if self._bk_task is not None:
            self._bk_task.cancel()
            self._bk_task = None
        if self._bk is not None:
            self._bk.close()   # mid-exchange: its state is unknown, never back to the pool
            self._bk = None
        super()._finish(reason, detail)

    def _event_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"mode": "http"}
        if self._http is not None:
            fields["requests"] = self._http.requests
        if self._statuses:
            fields["statuses"] = dict(self._statuses)
        if self._stripped:
            fields["stripped_headers"] = self._stripped
        if self._bk_opened:
            fields["backend_connections"] = self._bk_opened
        return fields
