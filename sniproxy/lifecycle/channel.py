"""The control channel between the supervisor and one worker: JSON lines over a socketpair.

Owns: framing (one JSON object per line) and request/reply matching by ``id``. Messages are few
(a reload, a drain), so clarity wins over speed. Must not: know what the messages mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from typing import Any

# A config text travels in one message: allow large configs, refuse absurd lines.
LINE_LIMIT = 16 * 1024 * 1024


class Channel:
    """One end of a control channel (supervisor or worker side)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.eof = False          # the peer is gone: a request fails at once instead of timing out

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        """Wrap a connected stream socket (one end of a ``socketpair``)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    def send(self, msg: dict[str, Any]) -> None:
        """Queue one message (no wait: the peer reads promptly, and messages are small and rare)."""
        if not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    async def request(self, msg: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Send ``msg`` with a fresh ``id`` and wait for the reply carrying it (``read`` delivers it)."""
        if self.eof:
            raise ConnectionError("control channel closed")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self.send({**msg, "id": rid})
        try:
            return await asyncio.wait_for(fut, seconds)
        finally:
            self._waiting.pop(rid, None)

    async def read(self) -> dict[str, Any] | None:
        """The next message that is not a reply to ``request`` (``None`` at EOF)."""
        while True:
            try:
                line = await self.reader.readline()
            except (ConnectionError, ValueError):   # ValueError: a line over LINE_LIMIT
                line = b""
            if not line:
                self.eof = True
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("control channel closed"))
                return None
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            reply_to = msg.get("reply_to")
            if isinstance(reply_to, int):
                waiter = self._waiting.get(reply_to)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg)
                continue
            return msg

    def close(self) -> None:
        """Close this end (the peer reads EOF)."""
        with contextlib.suppress(Exception):
            self.writer.close()
