"""Keep-alive connections to HTTP backends, shared by the client connections of one listener.

Owns: ``BackendConn`` (one plaintext connection to a backend, lent to one client connection at a
time), ``BackendPool`` (its idle connections and their timers) and the process-wide pools by
listener. Must not: parse HTTP (``proto/http_backend.py`` does) or decide whether a connection may
be reused (its owner does, from the exchange that just ended).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from sniproxy.config.model import Address, HttpOptions
from sniproxy.driver.shared import WRITE_HIGH

TICK = 0.002   # seconds: a timer firing this close to its deadline counts as due (uvloop: 1 ms clock)


class BackendOwner(Protocol):
    """The client side a borrowed backend connection reports to (``driver.http.HttpBack``)."""

    def backend_data(self, data: bytes) -> None:
        """Bytes from the backend."""

    def backend_closed(self, exc: Exception | None) -> None:
        """The backend connection went away."""

    def backend_full(self, full: bool) -> None:
        """The backend's write buffer crossed its high (or back under its low) water mark."""


class BackendConn(asyncio.Protocol):
    """One plaintext HTTP connection to the backend, owned by one client connection at a time."""

    __slots__ = ("closed", "loop", "owner", "paused", "pool", "transport")

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        # Its event loop, looked up once: asyncio.get_running_loop() costs a getpid() system call, and
        # the pool wants the loop every time the connection is given back (once per request).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.owner: BackendOwner | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)

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

    def writelines(self, parts: list[bytes]) -> None:
        """Send ``parts`` in one go (one writev with uvloop) unless the connection is already closing."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)

    def close(self) -> None:
        """Close for good (never back to the pool)."""
        self.closed = True
        self.owner = None
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()


class BackendPool:
    """Idle keep-alive connections to one backend, at most ``max_idle``, each closed after
    ``idle_timeout`` unused (a backend's own keep-alive timeout may be shorter: keep this lower).

    One timer per pool sweeps the idle connections, not one per connection given back: a pooled
    backend is taken and given back once per request, and a timer armed and cancelled each time was a
    measurable share of a small request's cost (issue 16).
    """

    __slots__ = ("_idle", "_since", "_sweep", "address", "idle_timeout", "max_idle")

    def __init__(self, address: Address, max_idle: int, idle_timeout: float) -> None:
        self.address = address
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: list[BackendConn] = []
        self._since: dict[int, float] = {}        # id(conn) -> loop time it went idle
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> int:
        """Idle connections kept now."""
        return len(self._idle)

    def take(self) -> BackendConn | None:
        """The most recently used idle connection still open, or None."""
        while self._idle:
            conn = self._idle.pop()
            self._since.pop(id(conn), None)
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def give(self, conn: BackendConn) -> None:
        """Return a connection whose last exchange ended cleanly; closed if the pool is full."""
        conn.owner = None
        if conn.paused and conn.transport is not None:
            conn.transport.resume_reading()   # an idle backend closing must be noticed
            conn.paused = False
        if conn.closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        loop = conn.loop
        if loop is None:
            loop = conn.loop = asyncio.get_running_loop()
        self._idle.append(conn)
        self._since[id(conn)] = loop.time()
        if self._sweep is None:
            self._sweep = loop.call_later(self.idle_timeout, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for ``idle_timeout``; come back for the next one due."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        # + TICK: uvloop's timers work in whole milliseconds and may fire just short of the deadline;
        # without it the sweep re-arms for the same instant and spins until the clock ticks.
        cutoff = loop.time() + TICK - self.idle_timeout
        for conn in [c for c in self._idle if self._since.get(id(c), cutoff) <= cutoff]:
            conn.close()   # (forget drops it from the idle list)
        if self._idle:
            oldest = min(self._since.get(id(c), loop.time()) for c in self._idle)
            self._sweep = loop.call_at(oldest + self.idle_timeout, self._expire)

    def forget(self, conn: BackendConn) -> None:
        """Drop a closed connection from the idle list."""
        if conn in self._idle:
            self._idle.remove(conn)
        self._since.pop(id(conn), None)
        if not self._idle and self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    async def connect(self, owner: BackendOwner, seconds: float) -> BackendConn:
        """A new connection, owned by ``owner``. Raises ``OSError`` or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(seconds):
            _, proto = await loop.create_connection(lambda: BackendConn(self), self.address.host,
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
