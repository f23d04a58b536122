"""The admin endpoint's socket side: a small asyncio HTTP/1.1 server, one request per connection.

Bounded everywhere: request size (``http``), time to send it (``REQUEST_TIMEOUT``), connections at
once (``MAX_CONNECTIONS``: more are answered 503 and closed). Served by the supervisor (one per pod),
or by the only process with ``workers: 1``.
"""

from __future__ import annotations

import asyncio
import contextlib

from sniproxy.admin.http import HttpError, RequestParser, Response, text
from sniproxy.admin.routes import AdminApp, handle
from sniproxy.config.model import AdminSettings
from sniproxy.observability.log import get_logger

_log = get_logger("sniproxy.admin")
REQUEST_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32


class AdminServer:
    """A running admin endpoint; ``close`` stops it."""

    def __init__(self, app: AdminApp) -> None:
        self.app = app
        self.server: asyncio.Server | None = None
        self._active = 0

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the port is the real one when 0 was asked)."""
        assert self.server is not None and self.server.sockets
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, settings: AdminSettings) -> None:
        """Bind and accept."""
        self.server = await asyncio.start_server(self._serve, settings.bind.host, settings.bind.port,
                                                 backlog=64, limit=16384)

    async def close(self) -> None:
        """Stop accepting (requests in progress finish on their own, bounded by the timeouts)."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                resp = text(503, "too many admin connections")
                method = ""
            else:
                method, resp = await self._answer(reader, writer.get_extra_info("peername"))
            writer.write(resp.render(head_only=method == "HEAD"))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass    # the client went away or stopped reading: nothing to tell it
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, peer: object) -> tuple[str, Response]:
        parser = RequestParser()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                while True:
                    data = await reader.read(4096)
                    if not data:
                        return "", text(400, "connection closed before a whole request")
                    req = parser.feed(data)
                    if req is not None:
                        break
        except TimeoutError:
            return "", text(408, f"no whole request within {REQUEST_TIMEOUT:g} s")
        except HttpError as exc:
            _log.info("admin_bad_request", peer=str(peer), status=exc.status, reason=exc.message)
            return "", text(exc.status, exc.message)
        try:
            resp = await handle(self.app, req)
        except Exception as exc:   # our bug, not the client's: log it whole, answer 500
            _log.error("admin_internal_error", path=req.path, error=repr(exc), exc_info=True)
            resp = text(500, "internal error")
        _log.debug("admin_request", method=req.method, path=req.path, status=resp.status)
        return req.method, resp


async def start(settings: AdminSettings, app: AdminApp) -> AdminServer:
    """Start the admin endpoint on ``settings.bind`` serving ``app``."""
    server = AdminServer(app)
    await server.start(settings)
    host, port = server.address
    _log.info("admin_listening", address=f"{host}:{port}")
    return server
