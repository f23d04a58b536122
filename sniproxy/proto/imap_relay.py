"""IMAP after TLS, both directions (sans-IO): ``ImapRelay``, the ``MailRelay`` of IMAP listeners.

Owns the post-TLS IMAP session between the client and an unchanged Dovecot reached in plaintext:
- backend -> client (``ImapBackendFilter``): the backend greeting checked (swallowed after STARTTLS,
  passed on rewritten on implicit TLS), ``STARTTLS`` and ``LOGINDISABLED`` hidden from capability
  lists (the client is already on TLS), ``AUTH=EXTERNAL`` added while the proxy answers it, literals
  passed untouched, the ``BYE`` owed when the backend stops without one;
- client -> backend: passed through, or, when the proxy logs cards in (a master user is configured),
  through ``imap_auth.ImapExternal`` until the login succeeded; the relay then drops it and every
  later byte goes straight on, for a session that may idle for hours.
Must not do I/O, keep a clock or log: bytes in, ``ToClient``/``ToBackend``/``Notice``/``Stop`` out.
The pre-TLS dialog is ``imap.ImapPreTls``; the IMAP syntax both share is in ``imap``.
"""

from __future__ import annotations

import re
from typing import Protocol

from sniproxy.errors import Reason
from sniproxy.proto.imap import LITERAL_END, imap_unavailable
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.linebuf import safe_text, strip_eol
from sniproxy.proto.relay import RelayAction, Stop, ToBackend, ToClient

BACKEND_MAX_LINE = 65536   # longest backend line buffered (a longer one is passed on unchanged)

# Status responses and continuation requests end in free text (resp-text), never a literal.
_TEXT_RESPONSE = re.compile(rb"(?:\S+ (?:OK|NO|BAD|BYE|PREAUTH)|\+)(?: |\r?\n)", re.IGNORECASE)
_UNTAGGED_CAP = re.compile(rb"\* CAPABILITY(?= |\r?\n)", re.IGNORECASE)
_CAP_CODE = re.compile(rb"(\S+ (?:OK|NO|BAD|BYE|PREAUTH) \[CAPABILITY)([^\]\r\n]*)\]", re.IGNORECASE)
_GREETING_OK = re.compile(rb"\* OK(?: |\r?\n)", re.IGNORECASE)
_HIDDEN = frozenset({b"STARTTLS", b"LOGINDISABLED"})
_HEAD = 64      # bytes of a line kept to classify it when it is too long to buffer
_TAIL = 32      # bytes of a line kept to see a literal announcement at its end
_LITERAL_ENDINGS = (b"}\r\n", b"}\n")   # how a line announcing a literal ends (LITERAL_END), checked first


def _drop_atoms(atoms: bytes, add: bytes) -> bytes | None:
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
    if b"[" not in line and line[:12].upper() != b"* CAPABILITY":
        return line     # neither form can match: most lines of a session, for two regex calls less
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
    """What the backend filter tells the proxy-side login dialog (``imap_auth.ImapExternal``)."""

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

    def __init__(self, consume_greeting: bool = True, max_line: int = BACKEND_MAX_LINE, auth: AuthWatcher | None = None
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

    def receive_data(self, data: bytes) -> list[RelayAction]:
        """Feed backend bytes; return at most one ``ToClient`` (and a ``Stop`` if the backend refused)."""
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
                        return self._refuse(Reason.BACKEND_PROTOCOL, "greeting too long")
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
                    return self._refuse(Reason.BACKEND_PROTOCOL, "greeting too long")
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
        return [ToClient(out[0] if len(out) == 1 else b"".join(out))] if out else []

    def _end_of_line(self, head: bytes, tail: bytes) -> None:
        """A line ended: does a literal follow (RFC 9051 §4.3)?"""
        if not tail.endswith(_LITERAL_ENDINGS):
            self._continued = False     # no "{n}" at its end: what the regex below finds too, without it
            return
        m = LITERAL_END.search(tail)
        if m and (self._continued or not _TEXT_RESPONSE.match(head)):
            self._literal = int(m.group(1))
            self._continued = True
        else:
            self._continued = False
        # A zero-length literal ("{0}") is legal: the response simply continues on the next line.

    def _greeting(self, line: bytes, out: list[bytes]) -> list[RelayAction] | None:
        """Check the backend greeting (RFC 9051 §7.1.1); return actions when it is refused."""
        if _GREETING_OK.match(line):
            self._greeting_done = True
            if not self._consume:
                out.append(filter_capabilities(line, self._auth.extra_caps if self._auth is not None else b""))
            return None
        return self._refuse(Reason.BACKEND_REFUSED, safe_text(line))

    def _refuse(self, reason: Reason, detail: str) -> list[RelayAction]:
        # Only ever before the greeting is accepted, when nothing has been passed on yet: a Stop alone.
        self._closed = True
        self._line = bytearray()
        return [Stop(reason, detail)]


class ImapRelay:
    """Both directions of one IMAP session after TLS: the backend filter, and the proxy-side
    ``AUTHENTICATE EXTERNAL`` dialog when the proxy logs cards in."""

    __slots__ = ("_auth", "_filter")

    def __init__(self, *, consume_greeting: bool, login: ImapExternal | None,
                 max_line: int = BACKEND_MAX_LINE) -> None:
        """``consume_greeting``: a STARTTLS listener (the client had the proxy's greeting). ``login``: the
        proxy-side EXTERNAL dialog (a master user is configured); without it the client's bytes go to the
        backend unread (its own ``LOGIN`` decides)."""
        self._auth = login
        self._filter = ImapBackendFilter(consume_greeting=consume_greeting, max_line=max_line, auth=self._auth)

    @property
    def ready(self) -> bool:
        """True once the backend greeting was accepted."""
        return self._filter.greeting_done

    def from_client(self, data: bytes) -> list[RelayAction]:
        """Feed client plaintext: to the login dialog until logged in, then straight on."""
        if self._auth is None:
            return [ToBackend(data)]
        return self._auth.client_data(data)

    def from_backend(self, data: bytes) -> list[RelayAction]:
        """Feed backend bytes: the rewritten bytes for the client, then the login outcomes they carried."""
        out = self._filter.receive_data(data)
        auth = self._auth
        if auth is None:
            return out
        # After a Stop (only ever a refused greeting) there is no outcome to add: the dialog sees lines
        # only once the greeting is accepted, so the Stop stays last.
        out += auth.take_notices()
        if auth.done:
            # Logged in with nothing held: the rest of the session needs no login dialog.
            self._auth = None
            self._filter.detach_auth()
        return out

    def backend_closed(self) -> list[RelayAction]:
        """The ``BYE`` the client is owed when the backend went away between two responses without one."""
        if self._filter.owes_goodbye():
            return [ToClient(imap_unavailable("Backend closed the connection"))]
        return []
