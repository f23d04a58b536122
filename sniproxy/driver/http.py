"""The HTTP back half: ``https`` listeners in mode ``http``, a strict HTTP/1.1 reverse proxy.

Everything up to and including the card check is the front half's (PROXY header in, ClientHello,
flow by SNI, handshake with the flow's context, revocation); this half takes over at ``start``.
Requests are served one at a time and in order: the sans-IO ``ClientSide`` delimits, checks and
parses them, ``http_rewrite`` decides what the backend sees, and each request goes to a backend
connection from a small per-backend pool (``http_pool``), a ``BackendExchange`` framing it again (so
the backend never sees the client's framing) and parsing the response with llhttp. Bodies stream
both ways with backpressure: a full backend write buffer stops reading from the client, a full client
write buffer stops reading from the backend. A request the proxy refuses (400, 403, 421) or cannot
serve (502, 504) gets its answer, with a SOAP fault body when the request was SOAP, and the
connection closes; the front's ``finish`` then logs the one ``connection`` event with its reason.
Must not: touch the client socket or TLS (``FrontHalf.send_plain`` writes to the client).
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from time import monotonic
from typing import Any, cast

from sniproxy.config.model import HttpMode, HttpOptions, Listener, Protocol
from sniproxy.driver.halves import FrontHalf
from sniproxy.driver.http_pool import TICK, BackendConn, pool_for
from sniproxy.driver.shared import PENDING_MAX, Drain
from sniproxy.errors import Reason
from sniproxy.observability.log import get_logger
from sniproxy.proto.http_backend import (
    BackendExchange,
    Informational,
    RequestError,
    ResponseBody,
    ResponseBroken,
    ResponseEnd,
    ResponseHead,
    field_block,
)
from sniproxy.proto.http_rewrite import (
    BadRequest,
    Headers,
    StripRules,
    TlsFacts,
    check_fields,
    forwarded_fields,
    identity_headers,
    misdirected,
    needs_card,
    request_host,
    soap_version,
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

_log = get_logger("sniproxy.http")


def serves_http(listener: Listener) -> bool:
    """The listener is an ``https`` one in mode ``http`` (else its bytes are relayed as they are)."""
    http = listener.http
    return listener.protocol is Protocol.HTTPS and http is not None and http.mode is HttpMode.HTTP


@lru_cache(maxsize=64)
def _strip_rules(opts: HttpOptions) -> StripRules:
    # Built once per listener config (HttpOptions is frozen and hashable).
    return StripRules.build((name for _, name in opts.card_headers), opts.strip)


class HttpBack:
    """The back half of one client connection of an ``https`` listener in mode ``http``."""

    __slots__ = (
        "_bk",
        "_bk_full",
        "_bk_opened",
        "_bk_out",
        "_bk_pending",
        "_bk_task",
        "_chain_der",
        "_closed",
        "_debug",
        "_ex",
        "_flow",
        "_host_ok",
        "_http",
        "_id_cache",
        "_loop",
        "_opts",
        "_pause",
        "_pool",
        "_req_fields",
        "_req_method",
        "_resp_deadline",
        "_resp_started",
        "_resp_status",
        "_resp_timer",
        "_resume",
        "_routes",
        "_rules",
        "_send",
        "_statuses",
        "_stripped",
        "front",
    )

    def __init__(self, front: FrontHalf) -> None:
        self.front = front
        ls = front.lr.listener
        self._opts: HttpOptions = ls.http if ls.http is not None else HttpOptions()
        self._http: ClientSide | None = None
        self._pool = pool_for(ls.name, ls.backend.address, self._opts)
        self._bk: BackendConn | None = None
        self._bk_task: asyncio.Task[None] | None = None
        self._bk_pending: list[bytes] | None = None      # request bytes while the backend connects
        self._bk_full = False
        self._req_method = b""             # of the request in progress: HEAD responses are never pooled
        self._resp_status = 0
        self._bk_opened = 0                # backend connections this client caused to be opened
        self._bk_out: list[bytes] = []     # bytes for the backend, written once per batch of client events
        self._ex: BackendExchange | None = None   # the request/response exchange in progress
        self._chain_der: tuple[bytes, ...] = ()
        self._id_cache: tuple[bytes | None, bytes] | None = None   # (Host, its identity field block)
        self._resp_started = False
        self._resp_timer: asyncio.TimerHandle | None = None
        # When the response head is due (loop time), or None: one timer per connection follows it,
        # moved on when it fires early rather than re-armed per request (a heap entry per request).
        self._resp_deadline: float | None = None
        # The current (or last) request's fields: its SOAP version is guessed from them only when the proxy
        # writes an error body itself (a fault or plain text), not on every request.
        self._req_fields: Headers = []
        self._host_ok: bytes | None = None   # the last Host value that passed the Host checks (see _start_request)
        self._statuses: dict[str, int] = {}
        self._stripped = 0
        self._closed = False               # the front finished (its phase is ``closed``)
        # Facts and front methods used per request, kept here: one attribute load each, not two.
        self._routes = front.lr.routes
        self._flow: str | None = None
        self._send = front.send_plain
        self._pause = front.pause_client_reading
        self._resume = front.resume_client_reading
        self._rules = _strip_rules(self._opts)
        self._debug = False
        # The event loop, looked up once (asyncio.get_running_loop() makes a getpid() system call).
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ BackHalf
    def start(self) -> None:
        """Serve requests from now on: no backend yet (one is taken per request)."""
        front = self.front
        tls = front.tls
        assert tls is not None
        if front.card is not None:   # a verified card (its parsed chain is already freed)
            self._chain_der = tuple(tls.verified_chain_der())
        self._http = ClientSide(self._opts.max_request_line, self._opts.max_header_bytes)
        self._flow = front.flow
        # The per-request debug line costs a structlog proxy resolution even when filtered out.
        enabled = getattr(_log.bind(), "is_enabled_for", None)   # (structlog's filtering loggers have it)
        self._debug = bool(enabled(logging.DEBUG)) if enabled is not None else True
        front.enter_relay()

    def client_data(self, data: bytes) -> None:
        """Client plaintext: requests, parsed and forwarded."""
        assert self._http is not None
        self._events(self._http.receive_data(data))

    def client_eof(self) -> bool:
        """Keep the socket open to finish a response still owed."""
        if self._http is None:
            return False
        self._events(self._http.receive_data(b""))
        return True

    def pause_writing(self) -> None:
        """The client's write buffer is full: stop reading the response from the backend."""
        bk = self._bk
        if bk is not None and bk.transport is not None and not bk.transport.is_closing():
            bk.paused = True
            bk.transport.pause_reading()

    def resume_writing(self) -> None:
        """Read the response from the backend again."""
        bk = self._bk
        if bk is not None and bk.paused and bk.transport is not None and not bk.transport.is_closing():
            bk.paused = False
            bk.transport.resume_reading()

    def backend_timeout(self) -> None:
        """Not reached: this half answers its own backend timeouts (504) in the relay phase."""
        self.front.finish(Reason.TIMEOUT, "backend_connect")

    def drain_begin(self) -> None:
        """Between requests a keep-alive connection owes nothing: close it now (RFC 9112 §9.6)."""
        if (self._http is not None and self._bk is None and self._bk_task is None
                and not self._http.waiting and self._http.buffered == 0):
            self.front.finish(Reason.SHUTDOWN, "drain")

    def finish(self) -> None:
        """Stop the response timer and the connect; a backend mid-exchange never goes back to the pool."""
        self._closed = True
        if self._resp_timer is not None:
            self._resp_timer.cancel()
            self._resp_timer = None
        if self._bk_task is not None:
            self._bk_task.cancel()
            self._bk_task = None
        if self._bk is not None:
            self._bk.close()   # mid-exchange: its state is unknown, never back to the pool
            self._bk = None

    def event_fields(self) -> dict[str, Any]:
        """The mode, request and status counts, stripped headers and backend connections opened."""
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

    # ------------------------------------------------------------------ client events
    def _events(self, events: list[Event]) -> None:
        # A batch holds at most one request (the next waits for this response). When its framing
        # breaks within the bytes already here, refuse before anything of it reaches the backend.
        # (dispatch on the exact class: the events are final dataclasses of http_server, one per kind)
        for event in events:
            if type(event) is RequestRefused:
                events = [event]
                break
        for event in events:
            if self._closed:
                return
            kind = type(event)
            if kind is RequestStarted:
                self._start_request(event)  # type: ignore[arg-type]
            elif kind is BodyReceived or kind is RequestEnded:
                ex = self._ex
                if ex is None:   # its head was refused: nothing of it goes to the backend
                    continue
                try:
                    out = ex.body(event.data) if kind is BodyReceived else ex.end()  # type: ignore[union-attr]
                except RequestError as exc:   # a body the head it came with cannot carry
                    self.front.finish(Reason.BAD_REQUEST, f"request body cannot be forwarded: {exc}")
                    return
                if out:
                    self._bk_out.append(out)
                if kind is RequestEnded:
                    self._arm_response_timer()
            elif isinstance(event, RequestRefused):
                self._refuse(event.status, event.detail, event.soap, Reason.BAD_REQUEST)
            elif isinstance(event, ClientClosed):
                if event.mid_request:
                    self.front.finish(Reason.CLIENT_CLOSED, "client closed in the middle of a request")
                else:
                    self.front.finish(Reason.OK, "client closed")
        self._flush_backend()
        self._update_reading()

    def _start_request(self, req: RequestStarted) -> None:
        self._req_fields = req.headers
        self._resp_started = False
        self._req_method = req.method.upper()
        self._resp_status = 0
        self._ex = None
        admitted = self._admit(req)
        if admitted is None:   # refused (answered, the connection finishing)
            return
        headers, removed, host_value = admitted
        target = req.target
        self._stripped += removed
        if req.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        try:
            block = self._identity_block(host_value)
        except (BadRequest, RequestError) as exc:   # a card value no HTTP field can carry
            self._refuse(400, "request cannot be forwarded", self._request_soap(), Reason.BAD_REQUEST, detail=str(exc))
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
            # the method, target and client fields come from the request reader (llhttp), the identity fields
            # passed check_fields: the head is written as it is, with our framing
            parts = ex.request_parts(req.method, target, headers, chunked=req.chunked, block=block)
        except RequestError as exc:  # a head we accepted in but will not write out (no Host in HTTP/1.0)
            self._refuse(400, "request cannot be forwarded", self._request_soap(), Reason.BAD_REQUEST, detail=str(exc))
            return
        self._ex = ex
        self._bk_out += parts   # (written with the body, as pieces, by _flush_backend)
        if self._debug:
            _log.debug("http_request", conn_id=self.front.id, method=req.method.decode("latin-1"),
                       target=req.target[:200].decode("latin-1"), stripped=removed, reused=bk is not None)

    def _admit(self, req: RequestStarted) -> tuple[Headers, int, bytes | None] | None:
        """The request's checks before anything of it reaches a backend, in order: Host (400), hop-by-hop
        fields (400), the flow of its Host (421), the card paths (403). Returns the fields to forward, how many
        identity fields were removed and the Host value; None when it was refused."""
        fields = req.headers
        target = req.target
        host_value = None
        for name, value in fields:   # (names lower-cased, at most one Host: ClientSide checked both)
            if name == b"host":
                host_value = value
                break
        # The Host checks depend on its value alone for an origin-form target (the routes and the flow are
        # the connection's): a value that passed them once on this connection is not checked again.
        known = host_value is not None and host_value == self._host_ok and target[:1] == b"/"
        try:
            host = None if known else request_host(target, fields)
            headers, removed = forwarded_fields(fields, self._rules)
        except BadRequest as exc:
            self._refuse(400, "bad request", self._request_soap(), Reason.BAD_REQUEST, detail=str(exc))
            return None
        if not known:
            other = misdirected(host, self._routes, self._flow or "")
            if other is not None:
                self._refuse(421, f"{host} is served by another flow than this connection's", self._request_soap(),
                             Reason.MISDIRECTED_REQUEST, detail=f"host {host} is flow {other}, SNI chose {self._flow}")
                return None
            if target[:1] == b"/":
                self._host_ok = host_value
        if not self._chain_der and needs_card(target, self._opts.card_required_paths):
            self._refuse(403, "a professional card is required for this service", self._request_soap(),
                         Reason.CARD_REQUIRED, detail=f"no card for {target[:200].decode('latin-1')}")
            return None
        return headers, removed, host_value

    def _identity_block(self, host: bytes | None) -> bytes:
        # The identity fields depend on the connection and the Host only: encoded once for both
        # (several KB of PEM and base64 with a card), not walked again on every request.
        cache = self._id_cache
        if cache is not None and cache[0] == host:
            return cache[1]
        front = self.front
        tls = front.tls
        assert tls is not None
        facts = TlsFacts(client_ip=front.client_addr[0], client_port=front.client_addr[1],
                         host=host.decode("latin-1") if host else None, tls_version=tls.version,
                         cipher=tls.cipher, cipher_bits=tls.cipher_bits, session_id=tls.session_id,
                         chain_der=self._chain_der, card=front.card)
        out = identity_headers(self._opts.headers, facts, self._opts.card_headers)
        check_fields(out)
        block = field_block(out)
        self._id_cache = (host, block)
        return block

    def _request_soap(self) -> str | None:
        return soap_version(self._req_fields)

    def _to_backend(self, data: bytes | None) -> None:
        if data:
            self._bk_out.append(data)

    def _flush_backend(self) -> None:
        """One write per batch: head, body pieces and the end of a small request go out together."""
        parts = self._bk_out
        if not parts:
            return
        self._bk_out = []
        if self._closed:
            return
        self.front.last_io = monotonic()
        if self._bk is not None:
            # As pieces, not joined: uvloop sends a writelines in one writev, so the identity block (KBs)
            # and the body are not copied into one bytes object first.
            self._bk.writelines(parts)
        elif self._bk_pending is not None:
            self._bk_pending += parts

    async def _connect(self) -> None:
        try:
            bk = await self._pool.connect(self, self.front.lr.listener.timeouts.connect)
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
        if self._closed:
            bk.close()
            return
        self._bk = bk
        pending, self._bk_pending = self._bk_pending or [], None
        if pending:
            bk.writelines(pending)
        self._update_reading()

    def _arm_response_timer(self) -> None:
        if self._resp_started:
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self._opts.response_timeout
        self._resp_deadline = deadline
        timer = self._resp_timer
        if timer is not None and timer.when() > deadline:   # (a shorter timeout after a reload)
            timer.cancel()
            timer = None
        if timer is None:
            self._resp_timer = loop.call_at(deadline, self._response_timeout)

    def _response_timeout(self) -> None:
        self._resp_timer = None
        deadline = self._resp_deadline
        if deadline is None or self._resp_started or self._closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() + TICK < deadline:   # a later request moved the deadline on (TICK: see http_pool)
            self._resp_timer = loop.call_at(deadline, self._response_timeout)
            return
        self._backend_error(504, Reason.BACKEND_TIMEOUT, f"no response head in {self._opts.response_timeout:g} s")

    # ------------------------------------------------------------------ backend events (BackendOwner)
    def backend_data(self, data: bytes) -> None:
        """Bytes from the current backend connection."""
        try:
            self._backend_bytes(data)
        except Exception as exc:  # the one catch-all, as in the front's data_received
            _log.error("internal_error", conn_id=self.front.id, error=repr(exc), exc_info=True)
            self.front.finish(Reason.INTERNAL_ERROR, type(exc).__name__)

    def _backend_bytes(self, data: bytes) -> None:
        bk = self._bk
        ex = self._ex
        if bk is None or ex is None or self._http is None or self._closed:
            return
        self.front.last_io = monotonic()
        # Plaintext for the client, encrypted and written once per read (head, body and end together).
        out: list[bytes] = []
        for event in ex.receive_data(data):
            if self._closed or self._bk is not bk:
                return
            kind = type(event)   # (exact class: the events are final dataclasses of http_backend, one per kind)
            if kind is ResponseBody:
                out.append(self._http.body(event.data))  # type: ignore[union-attr]
            elif kind is ResponseHead:
                self._resp_status = event.status  # type: ignore[union-attr]
                out.append(self._response_head(event))  # type: ignore[arg-type]
            elif kind is ResponseEnd:
                self._response_end(bk, out, event.reusable)  # type: ignore[union-attr]
                return
            elif isinstance(event, Informational):
                # 100 Continue (and 103) relayed; a 101 cannot happen: Upgrade is never forwarded.
                if event.status in (100, 103) and not self._resp_started:
                    out.append(self._http.informational(event.status, []))
            else:   # ResponseBroken
                self._flush_client(out)
                self._backend_error(502, Reason.BACKEND_PROTOCOL, cast(ResponseBroken, event).detail)
                return
        self._flush_client(out)

    def _flush_client(self, out: list[bytes]) -> None:
        if out and not self._closed:
            self._send(b"".join(out))

    def _response_head(self, event: ResponseHead) -> bytes:
        assert self._http is not None
        self._resp_deadline = None   # the timer, if any, finds nothing due (cancelled in finish)
        self._resp_started = True
        key = str(event.status)
        self._statuses[key] = self._statuses.get(key, 0) + 1
        headers = without_hop_by_hop(event.headers, strict=False)
        if Drain.active:
            # Draining: this response is the connection's last; the client opens a new one elsewhere.
            headers.append((b"connection", b"close"))
        return self._http.response(event.status, headers, event.reason)

    def _response_end(self, bk: BackendConn, out: list[bytes], reusable: bool) -> None:
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
        if self._closed:
            return
        if not keep:
            self.front.finish(Reason.OK, "response ended the connection")
            return
        events = self._http.next_request()
        if events:
            self._events(events)
        else:   # (the usual case: nothing pipelined; nothing for the backend either, _events flushed it)
            self._update_reading()

    def backend_closed(self, exc: Exception | None) -> None:
        """The current backend connection went away."""
        bk = self._bk
        if bk is None or self._closed:
            return
        # A response framed by the connection's end (HTTP/1.0 style) completes only now.
        self._backend_bytes(b"")
        if self._bk is bk and not self._closed:
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
                     self._request_soap(), reason, detail=detail)

    # ------------------------------------------------------------------ answers and flow control
    def _refuse(self, status: int, message: str, soap: str | None, reason: Reason, detail: str = "") -> None:
        """Answer ``status`` ourselves (unless a response is already on its way) and close."""
        if self._closed:
            return
        key = str(status)
        if self._http is not None and not self._resp_started:
            self._statuses[key] = self._statuses.get(key, 0) + 1
            self._send(self._http.error(status, message, soap))
        self.front.finish(reason, detail or message)

    def _update_reading(self) -> None:
        """Read from the client only while what it sends has somewhere to go."""
        http = self._http
        pending = sum(len(b) for b in self._bk_pending) if self._bk_pending else 0
        stop = self._bk_full or pending > PENDING_MAX or (
            http is not None and http.waiting and http.buffered > self._opts.max_header_bytes)
        if stop:
            self._pause()
        else:
            self._resume()
