"""What the demo's plaintext IMAP and SMTP backends share: the mail store and the listening server.

Owns: a bounded in-memory store, bounded timed reads, the listening server with its session records,
and SASL PLAIN checking; the dialogs are in ``imap_backend`` and ``smtp_backend``.
Both advertise STARTTLS on purpose but cannot do it: the proxy in front must strip it, and the
demo shows that it does. Must not: do TLS, touch the disk, use threads, or be used in production.
Every read is bounded (a line by ``LINE_MAX``, a message or a command with literals by
``MESSAGE_MAX``) and every wait by the idle timeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import deque
from dataclasses import dataclass, field

from sniproxy.errors import SniproxyError
from sniproxy.observability.log import get_logger

LINE_MAX = 8 * 1024
MESSAGE_MAX = 1024 * 1024
MAILBOX_MAX = 1000  # messages per user; deliveries beyond are refused
RECIPIENTS_MAX = 100
SESSIONS_KEPT = 256
PASSWORD = "demo"  # the one password the demo backends accept  # noqa: S105
UIDVALIDITY = 1
IMAP_CAPABILITY = "IMAP4rev1 AUTH=PLAIN STARTTLS"
SMTP_HOSTNAME = "demo-backend"

_log = get_logger("sniproxy.demo.backends")


class DeliveryRefused(SniproxyError, ValueError):
    """The store refused a message (too big, or the mailbox is full); a ``ValueError`` as it always was."""


def _user_key(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    data: bytes
    received: float


class MailStore:
    """In-memory mailboxes keyed by address (case-insensitive); UIDs are 1-based indexes, never reused."""

    def __init__(self) -> None:
        self._boxes: dict[str, list[StoredMessage]] = {}
        self._seen: dict[str, set[int]] = {}

    def deliver(self, rcpt: str, data: bytes) -> None:
        """Append ``data`` to ``rcpt``'s INBOX; raise :class:`DeliveryRefused` past the bounds."""
        if len(data) > MESSAGE_MAX:
            raise DeliveryRefused(f"message of {len(data)} bytes exceeds {MESSAGE_MAX}")
        box = self._boxes.setdefault(_user_key(rcpt), [])
        if len(box) >= MAILBOX_MAX:
            raise DeliveryRefused(f"mailbox {rcpt} is full")
        box.append(StoredMessage(bytes(data), time.time()))

    def messages(self, user: str) -> list[bytes]:
        """The messages of ``user``'s INBOX, oldest first (message n has UID n)."""
        return [m.data for m in self._boxes.get(_user_key(user), [])]

    def box(self, user: str) -> list[StoredMessage]:
        return self._boxes.get(_user_key(user), [])

    def seen_set(self, user: str) -> set[int]:
        return self._seen.setdefault(_user_key(user), set())


@dataclass(slots=True)
class SessionRecord:
    """What one backend connection did, for the demo to print: peer address and successful logins."""

    protocol: str
    peer: str
    logins: list[str] = field(default_factory=list)
    delivered: int = 0
    closed: bool = False


class LineTooLong(SniproxyError):
    """A client line over the demo backend's limit."""


class BoundedConn:
    """One client's streams with bounded, timed reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: float) -> None:
        self.reader, self.writer, self.idle = reader, writer, idle

    async def read_line(self) -> bytes:
        try:
            async with asyncio.timeout(self.idle):
                return await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise LineTooLong from exc

    async def read_exactly(self, n: int) -> bytes:
        async with asyncio.timeout(self.idle):
            return await self.reader.readexactly(n)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(self.idle):
            await self.writer.drain()


def _peer(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


class DemoServer:
    """Listening socket, connection tasks and session records shared by both backends."""

    protocol = ""

    def __init__(self, store: MailStore, *, idle_timeout: float = 600.0) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.sessions: deque[SessionRecord] = deque(maxlen=SESSIONS_KEPT)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port) and return the bound port."""
        if self._server is not None:
            raise RuntimeError(f"demo {self.protocol} backend already started")
        self._server = await asyncio.start_server(self._handle, host, port, limit=LINE_MAX)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = SessionRecord(self.protocol, _peer(writer))
        self.sessions.append(record)
        conn = BoundedConn(reader, writer, self.idle_timeout)
        try:
            await self._serve(conn, record)
        except LineTooLong:
            await self._too_long(conn)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or idled out: nothing to answer
        except Exception:  # the one catch-all: log and close, never kill the server
            _log.exception("demo_backend_error", protocol=self.protocol, peer=record.peer)
        finally:
            record.closed = True
            self._tasks.discard(task)
            writer.close()

    async def _too_long(self, conn: BoundedConn) -> None:
        try:
            await conn.send(self._too_long_reply)
        except (ConnectionError, TimeoutError):
            pass

    _too_long_reply = b""

    async def _serve(self, conn: BoundedConn, record: SessionRecord) -> None:
        raise NotImplementedError


def check_plain(response: str) -> str | None:
    """Decode a SASL PLAIN response (RFC 4616); return the user if the password is right."""
    try:
        raw = base64.b64decode(response.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    parts = raw.split(b"\0")
    if len(parts) != 3:
        return None
    authzid, authcid, passwd = (p.decode("utf-8", "replace") for p in parts)
    if not authcid or passwd != PASSWORD:
        return None
    return authzid or authcid
