"""IMAP, sans-IO: the pre-TLS dialog with the client and the post-TLS backend->client filter.

Owns: what sniproxy says to an IMAP client before TLS (RFC 9051 §6.1, §6.2.1 STARTTLS), and the
rewriting of the backend's greeting and capability lists once the client is on TLS. Must not do
I/O, keep a clock or log: it is fed bytes and returns ``Action`` values.

The backend is an unchanged Dovecot reached in plaintext, so it advertises ``STARTTLS`` and
``LOGINDISABLED``; the client is already on TLS and must see neither.
"""

from __future__ import annotations

import re
from typing import Protocol

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Close, Send, StartTls
from sniproxy.proto.linebuf import LineTooLong, safe_text, strip_eol
from sniproxy.proto.pretls import PreTlsDialog, State

CAPABILITIES = b"IMAP4rev1 STARTTLS LOGINDISABLED"

# RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]";
# ATOM-CHAR excludes "(" ")" "{" SP CTL "%" "*" DQUOTE "\". Only a valid tag is ever echoed back.
_TAG = re.compile(rb'[\x21-\x7e]+')
_TAG_FORBIDDEN = frozenset(b'(){%*"\\+')


def imap_unavailable(detail: str) -> bytes:
    """Untagged BYE sent on TLS when the backend cannot serve (RFC 9051 §7.1.5, §7.1 UNAVAILABLE)."""
    return b"* BYE [UNAVAILABLE] " + _one_line(detail) + b"\r\n"


def _one_line(text: str) -> bytes:
    """ASCII bytes of ``text`` with no CR/LF, so a reply can never be split by its content."""
    return text.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def _valid_tag(tag: bytes) -> bool:
    return bool(_TAG.fullmatch(tag)) and not any(b in _TAG_FORBIDDEN for b in tag)


class ImapPreTls(PreTlsDialog):
    """The IMAP dialog before STARTTLS: greet, answer CAPABILITY/NOOP/LOGOUT, start TLS.

    Credentials are refused (``LOGINDISABLED``, RFC 9051 §6.2.3) and nothing is ever forwarded.
    Any byte the client pipelined after ``STARTTLS`` closes the connection instead of starting TLS
    (the CVE-2011-0411 class: such bytes must never be executed after the handshake).
    """

    __slots__ = ()

    def greeting(self) -> list[Action]:
        """The server greeting (RFC 9051 §7.1.1), with capabilities so clients skip a round trip."""
        return [Send(b"* OK [CAPABILITY " + CAPABILITIES + b"] " + self._hostname + b" ready\r\n")]

    def receive_data(self, data: bytes) -> list[Action]:
        """Feed bytes from the client; return what to send and whether to start TLS or close."""
        if self._state is not State.DIALOG:
            return []
        self._lines.feed(data)
        out = bytearray()
        while True:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                self._move(State.CLOSED)
                return _flush(out, b"* BYE Line too long\r\n", Close(Reason.LINE_TOO_LONG))
            if line is None:
                return [Send(bytes(out))] if out else []
            self._commands += 1
            if self._commands > self._max_commands:
                self._move(State.CLOSED)
                return _flush(out, b"* BYE Too many commands\r\n", Close(Reason.TOO_MANY_COMMANDS))
            final = self._command(strip_eol(line), out)
            if final is not None:
                return final

    def _command(self, line: bytes, out: bytearray) -> list[Action] | None:
        """Answer one command into ``out``; return the final action list when the dialog ends."""
        tag, sp, rest = line.partition(b" ")
        command, _, args = rest.partition(b" ")
        if not sp or not command or not _valid_tag(tag):
            out += b"* BAD Missing or invalid tag or command\r\n"
            return None
        verb = command.upper()
        if verb in (b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS") and args:
            # RFC 9051 §6.1 and §6.2.1: these commands take no arguments.
            out += tag + b" BAD Unexpected arguments\r\n"
        elif verb == b"CAPABILITY":
            out += b"* CAPABILITY " + CAPABILITIES + b"\r\n" + tag + b" OK CAPABILITY completed\r\n"
        elif verb == b"NOOP":
            out += tag + b" OK NOOP completed\r\n"
        elif verb == b"LOGOUT":
            self._move(State.CLOSED)
            return _flush(out, b"* BYE " + self._hostname + b" logging out\r\n" + tag
                          + b" OK LOGOUT completed\r\n", Close(Reason.CLIENT_QUIT))
        elif verb == b"STARTTLS":
            if len(self._lines):
                # Bytes after STARTTLS arrived before our OK: a client cannot legitimately have
                # sent them (RFC 9051 §6.2.1: TLS starts right after the tagged OK), so they are
                # an injection attempt. Never start TLS with them pending.
                self._move(State.CLOSED)
                return _flush(out, tag + b" BAD [CLIENTBUG] Data pipelined after STARTTLS\r\n",
                              Close(Reason.STARTTLS_INJECTION, "data after STARTTLS"))
            self._move(State.TLS)
            return _flush(out, tag + b" OK Begin TLS negotiation now\r\n", StartTls())
        elif verb in (b"LOGIN", b"AUTHENTICATE"):
            out += tag + b" NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
        else:
            out += tag + b" BAD Command unknown or not allowed before STARTTLS\r\n"
        return None


def _flush(out: bytearray, last: bytes, action: Action) -> list[Action]:
    """One coalesced ``Send`` of everything answered so far plus ``last``, then ``action``."""
    return [Send(bytes(out) + last), action]


# ---------------------------------------------------------------------- backend -> client

# RFC 9051 §4.3: a literal is announced by "{" number "}" (or "{n+}" LITERAL+, "~{n}" literal8,
# RFC 3516) at the very end of a line; its bytes follow the CRLF and are not lines.
_LITERAL_END = re.compile(rb"\{(\d{1,20})\+?\}\r?\n\Z")
# Status responses and continuation requests end in free text (resp-text), never a literal.
_TEXT_RESPONSE = re.compile(rb"(?:\S+ (?:OK|NO|BAD|BYE|PREAUTH)|\+)(?: |\r?\n)", re.IGNORECASE)
_UNTAGGED_CAP = re.compile(rb"\* CAPABILITY(?= |\r?\n)", re.IGNORECASE)
_CAP_CODE = re.compile(rb"(\S+ (?:OK|NO|BAD|BYE|PREAUTH) \[CAPABILITY)([^\]\r\n]*)\]", re.IGNORECASE)
_GREETING_OK = re.compile(rb"\* OK(?: |\r?\n)", re.IGNORECASE)
_HIDDEN = frozenset({b"STARTTLS", b"LOGINDISABLED"})
_HEAD = 64      # bytes of a line kept to classify it when it is too long to buffer
_TAIL = 32      # bytes of a line kept to see a literal announcement at its end


def _drop_atoms(atoms: bytes, add: bytes = b"") -> bytes | None:
    """``atoms`` (space-led) without the hidden capabilities and with ``add`` (space-separated atoms)
    appended when missing, or None when nothing changed."""
    parts = atoms.split(b" ")
    kept = [p for p in parts if p.upper() not in _HIDDEN]
    present = {p.upper() for p in kept}
    extra = [a for a in add.split() if a.upper() not in present]
    if len(kept) == len(parts) and not extra:
        return None
    return b" ".join(kept + extra)


def filter_capabilities(line: bytes, add: bytes = b"") -> bytes:
    """Remove ``STARTTLS`` and ``LOGINDISABLED`` (whole atoms, any case) from one response line, and
    add the capabilities in ``add`` (e.g. ``AUTH=EXTERNAL`` when the proxy answers it).

    Handles untagged ``* CAPABILITY`` responses (RFC 9051 §7.2.2) and ``[CAPABILITY ...]`` response
    codes in status responses (§7.1). Any other line is returned unchanged.
    """
    if _UNTAGGED_CAP.match(line):
        body = strip_eol(line)
        kept = _drop_atoms(body[len(b"* CAPABILITY"):], add)
        return line if kept is None else line[:len(b"* CAPABILITY")] + kept + line[len(body):]
    m = _CAP_CODE.match(line)
    if m:
        kept = _drop_atoms(m.group(2), add)
        return line if kept is None else m.group(1) + kept + line[m.end(2):]
    return line


class AuthWatcher(Protocol):
    """What the backend filter tells a proxy-side login dialog (``imap_auth.ImapExternal``)."""

    @property
    def extra_caps(self) -> bytes:
        """Capabilities to add to the lists the client sees (empty once logged in)."""

    def backend_line(self, line: bytes) -> None:
        """One complete backend response line (not literal data), before it is rewritten."""


class ImapBackendFilter:
    """Backend->client IMAP stream after TLS: greeting check, capability rewrite, literals untouched.

    With ``consume_greeting`` (STARTTLS listeners) the backend's ``* OK`` greeting is swallowed, the
    client had ours; on implicit-TLS listeners it is passed on, rewritten. A ``* BYE``, a
    ``* PREAUTH`` (the proxy never lets the backend authenticate on its own) or anything else as
    greeting closes the connection. Literal bytes are forwarded in bulk without being scanned; at
    most one line (``max_line`` bytes) is buffered, a longer line is passed through unchanged.
    """

    __slots__ = ("_auth", "_bye", "_closed", "_consume", "_continued", "_greeting_done", "_head", "_line",
                 "_literal", "_long", "_max_line", "_tail")

    def __init__(self, consume_greeting: bool = True, max_line: int = 65536, auth: AuthWatcher | None = None
                 ) -> None:
        self._auth = auth
        self._consume = consume_greeting
        self._max_line = max_line
        self._greeting_done = False
        self._closed = False
        self._bye = False             # the backend said BYE: it owes the client no other goodbye
        self._line = bytearray()      # the unterminated line being assembled
        self._literal = 0             # literal bytes still to pass through
        self._continued = False       # the current line continues a response after a literal
        self._long = False            # passing through an over-long line until its LF
        self._head = b""
        self._tail = b""

    def detach_auth(self) -> None:
        """Stop reporting lines to the login dialog (it is done: the client is logged in)."""
        self._auth = None

    def owes_goodbye(self) -> bool:
        """True when the backend's stream stopped between two responses without a ``* BYE``.

        Dovecot closes its sessions at shutdown without one; RFC 9051 §7.1.5 has the server send BYE
        before it closes, so the proxy says it instead. Never in the middle of a response (a line or a
        literal cut short): a BYE there would be read as part of it.
        """
        return (self._greeting_done and not self._closed and not self._bye and not self._line
                and not self._literal and not self._long and not self._continued)

    @property
    def greeting_done(self) -> bool:
        """True once the backend greeting was accepted (the relay may start)."""
        return self._greeting_done

    def receive_data(self, data: bytes) -> list[Action]:
        """Feed backend bytes; return at most one ``Send`` (and a ``Close`` if the backend refused)."""
        if self._closed:
            return []
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._literal:
                take = min(self._literal, end - pos)
                # Bulk: a chunk made only of literal bytes is forwarded without a copy.
                out.append(data if take == end else data[pos:pos + take])
                self._literal -= take
                pos += take
                continue
            nl = data.find(b"\n", pos)
            if self._long:
                stop = end if nl < 0 else nl + 1
                piece = data[pos:stop]
                out.append(piece)
                self._tail = (self._tail + piece)[-_TAIL:]
                pos = stop
                if nl >= 0:
                    self._long = False
                    self._end_of_line(self._head, self._tail)
                continue
            if nl < 0:
                self._line += data[pos:]
                pos = end
                if len(self._line) > self._max_line:
                    line, self._line = bytes(self._line), bytearray()
                    if not self._greeting_done:
                        return self._refuse(out, Reason.BACKEND_PROTOCOL, "greeting too long")
                    out.append(line)
                    self._long, self._head, self._tail = True, line[:_HEAD], line[-_TAIL:]
                continue
            if self._line:
                self._line += data[pos:nl + 1]
                line, self._line = bytes(self._line), bytearray()
            else:
                line = data[pos:nl + 1]
            pos = nl + 1
            if not self._greeting_done:
                if len(line) > self._max_line:
                    return self._refuse(out, Reason.BACKEND_PROTOCOL, "greeting too long")
                refused = self._greeting(line, out)
                if refused is not None:
                    return refused
            elif len(line) > self._max_line or self._continued:
                out.append(line)
            elif line[:6].upper() == b"* BYE ":
                self._bye = True
                out.append(line)
            elif self._auth is not None:
                self._auth.backend_line(line)
                out.append(filter_capabilities(line, self._auth.extra_caps))
            else:
                out.append(filter_capabilities(line))
            self._end_of_line(line[:_HEAD], line[-_TAIL:])
        return [Send(out[0] if len(out) == 1 else b"".join(out))] if out else []

    def _end_of_line(self, head: bytes, tail: bytes) -> None:
        """A line ended: does a literal follow (RFC 9051 §4.3)?"""
        m = _LITERAL_END.search(tail)
        if m and (self._continued or not _TEXT_RESPONSE.match(head)):
            self._literal = int(m.group(1))
            self._continued = True
        else:
            self._continued = False
        # A zero-length literal ("{0}") is legal: the response simply continues on the next line.

    def _greeting(self, line: bytes, out: list[bytes]) -> list[Action] | None:
        """Check the backend greeting (RFC 9051 §7.1.1); return actions when it is refused."""
        if _GREETING_OK.match(line):
            self._greeting_done = True
            if not self._consume:
                out.append(filter_capabilities(line, self._auth.extra_caps if self._auth is not None else b""))
            return None
        return self._refuse(out, Reason.BACKEND_REFUSED, safe_text(line))

    def _refuse(self, out: list[bytes], reason: Reason, detail: str) -> list[Action]:
        self._closed = True
        self._line = bytearray()
        sent: list[Action] = [Send(b"".join(out))] if out else []
        return [*sent, Close(reason, detail)]
