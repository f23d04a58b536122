"""The demo's plaintext IMAP4rev1 subset (enough for ``imaplib`` and ``curl imap://``) over a :class:`MailStore`."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TypeAlias

from sniproxy.demo.backend_base import (
    IMAP_CAPABILITY,
    MESSAGE_MAX,
    PASSWORD,
    UIDVALIDITY,
    BoundedConn,
    DemoServer,
    LineTooLong,
    MailStore,
    SessionRecord,
    StoredMessage,
    check_plain,
)
from sniproxy.errors import SniproxyError

Token: TypeAlias = "str | list[Token]"  # noqa: S105  (a type, not a password)


class _ImapSyntax(SniproxyError):
    """A command the demo IMAP backend cannot parse."""


@dataclass(frozen=True, slots=True)
class _Literal:
    data: bytes


_LITERAL_AT_END = re.compile(rb"\{(\d{1,7})(\+?)\}\r?\n\Z")
_TAG = re.compile(r"[!#$&'*+,\-./0-9:;<=>?@A-Z^_`a-z|~]+")
_BODY_ITEM = re.compile(r"BODY(\.PEEK)?\[(|HEADER|TEXT)\](?:<(\d+)\.(\d+)>)?\Z")
_SIMPLE_ITEMS = {"FLAGS", "UID", "INTERNALDATE", "RFC822", "RFC822.SIZE", "RFC822.HEADER", "RFC822.TEXT"}
_AUTHED = {"LIST", "LSUB", "SELECT", "EXAMINE", "FETCH", "UID", "SEARCH", "CLOSE", "UNSELECT"}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _tokenize(segments: list[bytes | _Literal]) -> list[Token]:
    """Split a command into atoms, strings (quoted or literal) and parenthesized lists (RFC 3501 §4)."""
    stack: list[list[Token]] = [[]]
    for seg in segments:
        if isinstance(seg, _Literal):
            stack[-1].append(seg.data.decode("utf-8", "replace"))
            continue
        text, i = seg.decode("utf-8", "replace"), 0
        while i < len(text):
            c = text[i]
            if c == " ":
                i += 1
            elif c == "(":
                stack.append([])
                i += 1
            elif c == ")":
                if len(stack) == 1:
                    raise _ImapSyntax("unbalanced )")
                inner = stack.pop()
                stack[-1].append(inner)
                i += 1
            elif c == '"':
                out, i = [], i + 1
                while i < len(text) and text[i] != '"':
                    if text[i] == "\\" and i + 1 < len(text):
                        i += 1
                    out.append(text[i])
                    i += 1
                if i >= len(text):
                    raise _ImapSyntax("unterminated quoted string")
                stack[-1].append("".join(out))
                i += 1
            else:  # an atom; brackets may hold spaces and parens: BODY[HEADER.FIELDS (FROM)]
                j, depth = i, 0
                while j < len(text) and (depth or text[j] not in " ()"):
                    depth += {"[": 1, "]": -1}.get(text[j], 0)
                    j += 1
                stack[-1].append(text[i:j])
                i = j
    if len(stack) != 1:
        raise _ImapSyntax("unbalanced (")
    return stack[0]


def _parse_set(spec: str, count: int, *, uid: bool) -> list[int]:
    """Sequence or UID set (RFC 3501 §9 sequence-set) clipped to 1..count; UIDs absent are skipped."""
    wanted: set[int] = set()
    for part in spec.split(","):
        ends: list[int] = []
        for end in part.split(":"):
            if end == "*":
                ends.append(max(count, 1))  # '*' is the last message (RFC 3501 §6.4.8)
            elif end.isdigit() and int(end) > 0:
                ends.append(int(end))
            else:
                raise _ImapSyntax(f"invalid set {spec!r}")
        if len(ends) not in (1, 2):
            raise _ImapSyntax(f"invalid set {spec!r}")
        lo, hi = min(ends), max(ends)
        if not uid and hi > count:
            raise _ImapSyntax("invalid message sequence number")
        wanted.update(range(lo, min(hi, count) + 1))
    return sorted(wanted)


def _split_message(data: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = data.find(sep)
        if at >= 0:
            return data[: at + len(sep)], data[at + len(sep):]
    return data, b""


def _internaldate(ts: float) -> str:
    t = time.gmtime(ts)
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f'"{t.tm_mday:02d}-{_MONTHS[t.tm_mon - 1]}-{t.tm_year} {clock} +0000"'


def _mailbox_matches(pattern: str, name: str = "INBOX") -> bool:
    rx = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.IGNORECASE) is not None


class _ImapSession:
    """One IMAP connection: not authenticated, authenticated, selected (RFC 3501 §3)."""

    def __init__(self, server: DemoImapServer, conn: BoundedConn, record: SessionRecord) -> None:
        self.server, self.conn, self.record = server, conn, record
        self.user: str | None = None
        self.selected = False
        self.readonly = False
        self.known = 0

    async def run(self) -> None:
        await self.conn.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] demo backend ready\r\n")
        while True:
            segments = await self._read_command()
            first = segments[0] if isinstance(segments[0], bytes) else b""
            tag = first.split(b" ", 1)[0].decode("utf-8", "replace").strip()
            if not _TAG.fullmatch(tag):
                await self.conn.send(b"* BAD missing or invalid tag\r\n")
                continue
            try:
                tokens = _tokenize(segments)
                name = tokens[1] if len(tokens) > 1 else ""
                if not isinstance(name, str) or not name:
                    raise _ImapSyntax("missing command")
                go_on = await self._dispatch(tag, name.upper(), tokens[2:])
            except _ImapSyntax as exc:
                await self._reply(tag, "BAD", str(exc))
                continue
            if not go_on:
                return

    async def _read_command(self) -> list[bytes | _Literal]:
        """One command line, with its literals read in place (RFC 3501 §4.3, RFC 7888 for ``{n+}``)."""
        segments: list[bytes | _Literal] = []
        total = 0
        while True:
            line = await self.conn.read_line()
            total += len(line)
            m = _LITERAL_AT_END.search(line)
            if m is None:
                segments.append(line.rstrip(b"\r\n"))
                return segments
            size = int(m[1])
            if total + size > MESSAGE_MAX:
                raise LineTooLong
            segments.append(line[: m.start()])
            if not m[2]:
                await self.conn.send(b"+ Ready for literal data\r\n")
            segments.append(_Literal(await self.conn.read_exactly(size)))
            total += size

    async def _reply(self, tag: str, status: str, text: str) -> None:
        await self.conn.send(f"{tag} {status} {text}\r\n".encode())

    async def _dispatch(self, tag: str, cmd: str, args: list[Token]) -> bool:
        if cmd == "LOGOUT":
            await self.conn.send(b"* BYE demo backend logging out\r\n")
            await self._reply(tag, "OK", "LOGOUT completed")
            return False
        if cmd == "CAPABILITY":
            await self.conn.send(f"* CAPABILITY {IMAP_CAPABILITY}\r\n".encode())
            await self._reply(tag, "OK", "CAPABILITY completed")
        elif cmd in ("NOOP", "CHECK"):
            await self._announce_new()
            await self._reply(tag, "OK", f"{cmd} completed")
        elif cmd == "STARTTLS":
            await self._reply(tag, "BAD", "STARTTLS is the proxy's job: this demo backend is plaintext only")
        elif cmd in ("LOGIN", "AUTHENTICATE"):
            if self.user is not None:
                await self._reply(tag, "BAD", "already authenticated")
            elif cmd == "LOGIN":
                await self._login(tag, args)
            else:
                await self._authenticate(tag, args)
        elif self.user is None:
            await self._reply(tag, "BAD", "log in first" if cmd in _AUTHED else f"unknown command {cmd}")
        elif cmd in ("LIST", "LSUB"):
            await self._list(tag, cmd, args)
        elif cmd in ("SELECT", "EXAMINE"):
            await self._select(tag, cmd, args)
        elif cmd in ("CLOSE", "UNSELECT") and self.selected:
            self.selected = False
            await self._reply(tag, "OK", f"{cmd} completed")
        elif cmd in ("FETCH", "SEARCH", "UID") and self.selected:
            uid = cmd == "UID"
            if uid:
                if not args or not isinstance(args[0], str):
                    raise _ImapSyntax("UID needs FETCH or SEARCH")
                cmd, args = args[0].upper(), args[1:]
            if cmd == "FETCH":
                await self._fetch(tag, args, uid=uid)
            elif cmd == "SEARCH":
                await self._search(tag, args, uid=uid)
            else:
                await self._reply(tag, "BAD", f"UID {cmd} not supported")
        elif cmd in ("CLOSE", "UNSELECT", "FETCH", "SEARCH", "UID"):
            await self._reply(tag, "BAD", "no mailbox selected")
        else:
            await self._reply(tag, "BAD", f"unknown command {cmd}")
        return True

    def _logged_in(self, user: str) -> None:
        self.user = user
        self.record.logins.append(user)

    async def _login(self, tag: str, args: list[Token]) -> None:
        if len(args) != 2 or not all(isinstance(a, str) for a in args):
            raise _ImapSyntax("LOGIN needs a user and a password")
        user, password = str(args[0]), str(args[1])
        if user and password == PASSWORD:
            self._logged_in(user)
            await self._reply(tag, "OK", f"[CAPABILITY {IMAP_CAPABILITY}] LOGIN completed")
        else:
            await self._reply(tag, "NO", "[AUTHENTICATIONFAILED] invalid credentials")

    async def _authenticate(self, tag: str, args: list[Token]) -> None:
        if not args or not isinstance(args[0], str) or len(args) > 2:
            raise _ImapSyntax("AUTHENTICATE needs a mechanism")
        if args[0].upper() != "PLAIN":
            await self._reply(tag, "NO", f"unsupported mechanism {args[0]}")
            return
        if len(args) == 2 and isinstance(args[1], str):
            response = args[1]
        else:  # RFC 3501 §6.2.2: empty challenge, then one line from the client
            await self.conn.send(b"+ \r\n")
            response = (await self.conn.read_line()).decode("utf-8", "replace").strip()
        if response == "*":
            await self._reply(tag, "BAD", "AUTHENTICATE cancelled")
            return
        user = check_plain("" if response == "=" else response)
        if user is None:
            await self._reply(tag, "NO", "[AUTHENTICATIONFAILED] invalid credentials")
            return
        self._logged_in(user)
        await self._reply(tag, "OK", f"[CAPABILITY {IMAP_CAPABILITY}] AUTHENTICATE completed")

    async def _list(self, tag: str, cmd: str, args: list[Token]) -> None:
        if len(args) != 2 or not all(isinstance(a, str) for a in args):
            raise _ImapSyntax(f"{cmd} needs a reference and a pattern")
        pattern = str(args[1])
        if pattern == "" and cmd == "LIST":
            await self.conn.send(b'* LIST (\\Noselect) "/" ""\r\n')
        elif _mailbox_matches(pattern):
            await self.conn.send(f'* {cmd} (\\HasNoChildren) "/" INBOX\r\n'.encode())
        await self._reply(tag, "OK", f"{cmd} completed")

    async def _select(self, tag: str, cmd: str, args: list[Token]) -> None:
        if len(args) != 1 or not isinstance(args[0], str):
            raise _ImapSyntax(f"{cmd} needs a mailbox")
        self.selected = False
        if args[0].upper() != "INBOX":
            await self._reply(tag, "NO", "[NONEXISTENT] only INBOX exists here")
            return
        assert self.user is not None
        self.readonly = cmd == "EXAMINE"
        count = len(self.store_box())
        recent_mark = self.server.recent_mark.get(self.user, 0)
        if not self.readonly:  # RFC 3501 §2.3.2: \Recent belongs to the first session that sees it
            self.server.recent_mark[self.user] = count
        seen = self.server.store.seen_set(self.user)
        unseen = next((uid for uid in range(1, count + 1) if uid not in seen), None)
        lines = ["* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                 "* OK [PERMANENTFLAGS ()] no permanent flags",
                 f"* {count} EXISTS", f"* {max(count - recent_mark, 0)} RECENT",
                 f"* OK [UIDVALIDITY {UIDVALIDITY}] UIDs valid",
                 f"* OK [UIDNEXT {count + 1}] predicted next UID"]
        if unseen is not None:
            lines.append(f"* OK [UNSEEN {unseen}] first unseen")
        await self.conn.send("".join(f"{line}\r\n" for line in lines).encode())
        self.selected, self.known = True, count
        await self._reply(tag, "OK", f"[{'READ-ONLY' if self.readonly else 'READ-WRITE'}] {cmd} completed")

    def store_box(self) -> list[StoredMessage]:
        assert self.user is not None
        return self.server.store.box(self.user)

    async def _announce_new(self) -> None:
        if self.selected:
            count = len(self.store_box())
            if count != self.known:
                self.known = count
                await self.conn.send(f"* {count} EXISTS\r\n".encode())

    async def _search(self, tag: str, args: list[Token], *, uid: bool) -> None:
        if [a.upper() if isinstance(a, str) else a for a in args] != ["ALL"]:
            await self._reply(tag, "BAD", "only SEARCH ALL is supported")
            return
        hits = " ".join(str(n) for n in range(1, self.known + 1))
        await self.conn.send(f"* SEARCH{' ' if hits else ''}{hits}\r\n".encode())
        await self._reply(tag, "OK", f"{'UID ' if uid else ''}SEARCH completed")

    async def _fetch(self, tag: str, args: list[Token], *, uid: bool) -> None:
        if len(args) != 2 or not isinstance(args[0], str):
            raise _ImapSyntax("FETCH needs a set and items")
        raw_items = args[1] if isinstance(args[1], list) else [args[1]]
        items = [i.upper() for i in raw_items if isinstance(i, str)]
        if len(items) != len(raw_items) or not items:
            raise _ImapSyntax("invalid FETCH items")
        if items == ["FAST"]:
            items = ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
        for item in items:
            if item not in _SIMPLE_ITEMS and not _BODY_ITEM.match(item):
                await self._reply(tag, "BAD", f"unsupported FETCH item {item}")
                return
        if uid and "UID" not in items:
            items.insert(0, "UID")
        box = self.store_box()[: self.known]
        seen = self.server.store.seen_set(self.user or "")
        for n in _parse_set(args[0], len(box), uid=uid):
            await self.conn.send(self._fetch_one(n, box[n - 1], items, seen))
        await self._reply(tag, "OK", f"{'UID ' if uid else ''}FETCH completed")

    def _fetch_one(self, n: int, msg: StoredMessage, items: list[str], seen: set[int]) -> bytes:
        parts: list[bytes] = []
        marks_seen = False
        header, text = _split_message(msg.data)
        for item in items:
            if item == "UID":
                parts.append(f"UID {n}".encode())
            elif item == "FLAGS":
                continue  # rendered last, once the \Seen side effects are known
            elif item == "INTERNALDATE":
                parts.append(f"INTERNALDATE {_internaldate(msg.received)}".encode())
            elif item == "RFC822.SIZE":
                parts.append(f"RFC822.SIZE {len(msg.data)}".encode())
            else:
                m = _BODY_ITEM.match(item)
                if m is not None:
                    section = m[2]
                    data = {"": msg.data, "HEADER": header, "TEXT": text}[section]
                    name = f"BODY[{section}]"
                    if m[3] is not None:
                        origin = int(m[3])
                        data = data[origin: origin + int(m[4])]
                        name += f"<{origin}>"
                    marks_seen = marks_seen or m[1] is None
                else:
                    data = {"RFC822": msg.data, "RFC822.HEADER": header, "RFC822.TEXT": text}[item]
                    name = item
                    marks_seen = marks_seen or item != "RFC822.HEADER"
                parts.append(f"{name} {{{len(data)}}}\r\n".encode() + data)
        if marks_seen and not self.readonly and n not in seen:
            seen.add(n)  # RFC 3501 §6.4.5: BODY[] sets \Seen; the change is reported as FLAGS
            items = [*items, "FLAGS"]
        if "FLAGS" in items:
            parts.append(b"FLAGS (\\Seen)" if n in seen else b"FLAGS ()")
        return f"* {n} FETCH (".encode() + b" ".join(parts) + b")\r\n"


class DemoImapServer(DemoServer):
    """Plaintext IMAP4rev1 subset over a :class:`MailStore`; any user logs in with password ``demo``."""

    protocol = "imap"
    _too_long_reply = b"* BYE line too long\r\n"

    def __init__(self, store: MailStore, *, idle_timeout: float = 600.0) -> None:
        super().__init__(store, idle_timeout=idle_timeout)
        self.recent_mark: dict[str, int] = {}

    async def _serve(self, conn: BoundedConn, record: SessionRecord) -> None:
        await _ImapSession(self, conn, record).run()
