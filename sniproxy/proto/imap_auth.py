"""IMAP proxy-side SASL EXTERNAL (sans-IO): the card logs in, the proxy logs in to the backend for it.

Owns, for an IMAP backend that cannot see the certificate (a Dovecot with master users):
- the client's ``tag AUTHENTICATE EXTERNAL`` (RFC 4959 SASL-IR form ``tag AUTHENTICATE EXTERNAL =``
  or ``... <base64 authzid>``, or the continuation form ``+`` then a response line, RFC 9051 §6.2.2,
  RFC 4422 appendix A). The authorization identity asked for is checked against the login rule
  (``sniproxy.auth.login.decide``); allowed, the backend gets ``tag AUTHENTICATE PLAIN`` with
  authzid = mailbox, authcid = the master user and the master password (RFC 4616); refused, the
  client gets ``tag NO [AUTHENTICATIONFAILED]`` and the backend sees nothing at all;
- watching the backend's tagged answers to login commands (ours and the client's own ``LOGIN`` or
  ``AUTHENTICATE``, which pass through unchanged: the proxy grants nothing by itself), so that once
  logged in the stream is passed through without being parsed and ``AUTH=EXTERNAL`` is no longer
  added to capability lists;
- literals before login (``{n}`` / ``{n+}`` at the end of a line, RFC 9051 §4.3, RFC 7888): their
  bytes, and the rest of the command line after them, are passed through without being read as commands;
- the client's own ``AUTHENTICATE``: until its tagged answer, client lines are SASL responses for the
  backend, passed through and never read as commands (so a pipelined ``AUTHENTICATE EXTERNAL`` cannot
  make the proxy send the master login where the backend reads a SASL response);
- tags before login: a tag already in flight gets ``BAD`` (a reused tag would pair a login with the
  answer to another command).
No I/O, no clock, no logging: bytes in, ``ToClient``/``ToBackend``/``Notice``/``Stop`` out. The
master password only ever leaves inside the base64 PLAIN response to the backend, never in a
``Notice``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sniproxy.auth.login import LoginDecision
from sniproxy.auth.sasl import SaslError, decode_external, plain_response
from sniproxy.errors import Reason
from sniproxy.proto.imap import LITERAL_END, valid_tag
from sniproxy.proto.linebuf import safe_text, strip_eol
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient

Decide = Callable[[str], LoginDecision]

_TAGGED = re.compile(rb"(\S+) (OK|NO|BAD)(?: |\r?\n|\Z)", re.IGNORECASE)
MAX_LINE = 65536          # longest command line before login (Dovecot's own limit is 64 KiB)
MAX_INFLIGHT = 256        # tagged commands pipelined before login and not yet answered
EXTRA_CAPS = b"AUTH=EXTERNAL"


class ImapExternal:
    """The client->backend direction of one IMAP session, until the backend says the login worked.

    A part of ``imap_relay.ImapRelay``, which feeds it the client's bytes and, through the backend filter,
    the backend's response lines (the ``AuthWatcher`` side).
    """

    __slots__ = ("_buf", "_decide", "_ext_tag", "_inflight", "_literal", "_master_password", "_master_user",
                 "_max_line", "_notices", "_sasl_tag", "_tail", "_watched", "logged_in")

    def __init__(self, *, decide: Decide, master_user: str, master_password: str,
                 max_line: int = MAX_LINE) -> None:
        self._decide = decide
        self._master_user = master_user
        self._master_password = master_password
        self._max_line = max_line
        self._buf = bytearray()
        self._literal = 0                       # literal bytes still to pass through
        self._tail = False                      # after a literal: the rest of its command line comes
        self._ext_tag: bytes | None = None      # AUTHENTICATE EXTERNAL waiting for its response line
        self._sasl_tag: bytes | None = None     # the client's own AUTHENTICATE, until its tagged answer
        self._inflight: set[bytes] = set()      # tags sent to the backend and not yet answered
        # Tags of login commands sent to the backend -> the mailbox for ours, None for the client's own.
        self._watched: dict[bytes, str | None] = {}
        self._notices: list[RelayAction] = []
        self.logged_in = False

    # ------------------------------------------------------------------ backend side (AuthWatcher)
    @property
    def extra_caps(self) -> bytes:
        """``AUTH=EXTERNAL`` until logged in: the client learns it may use EXTERNAL (RFC 4959 §3)."""
        return b"" if self.logged_in else EXTRA_CAPS

    def backend_line(self, line: bytes) -> None:
        """Watch tagged answers to login commands; ``take_notices`` returns the outcomes."""
        if self.logged_in:
            return
        m = _TAGGED.match(line)
        if m is None:
            return
        self._inflight.discard(m.group(1))
        if m.group(1) == self._sasl_tag:
            self._sasl_tag = None
        if m.group(1) not in self._watched:
            return
        mailbox = self._watched.pop(m.group(1))
        ok = m.group(2).upper() == b"OK"
        if ok:
            self.logged_in = True
            self._watched.clear()
        if mailbox is not None:
            text = safe_text(strip_eol(line)[len(m.group(0)):])
            self._notices.append(Notice("auth", {"mechanism": "EXTERNAL", "mailbox": mailbox,
                                                 "result": "ok" if ok else "backend_refused",
                                                 **({} if ok else {"detail": text})}))

    @property
    def done(self) -> bool:
        """Logged in with nothing held: the session needs this dialog no more."""
        return self.logged_in and not self._buf and not self._literal

    def take_notices(self) -> list[RelayAction]:
        """Login outcomes learnt from the backend since the last call."""
        out, self._notices = self._notices, []
        return out

    # ------------------------------------------------------------------ client side
    def client_data(self, data: bytes) -> list[RelayAction]:
        """Feed client plaintext; return what goes to the backend and to the client, in order."""
        if self.logged_in and not self._buf and not self._literal:
            return [ToBackend(data)]
        self._buf += data
        out: list[RelayAction] = []
        to_backend = bytearray()

        def flush() -> None:
            if to_backend:
                out.append(ToBackend(bytes(to_backend)))
                to_backend.clear()

        while self._buf:
            if self._literal:
                take = min(self._literal, len(self._buf))
                to_backend += self._buf[:take]
                del self._buf[:take]
                self._literal -= take
                self._tail = self._literal == 0
                continue
            if self.logged_in:
                to_backend += self._buf
                self._buf.clear()
                break
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self._max_line:
                    flush()
                    return [*out, Stop(Reason.LINE_TOO_LONG, f"command line over {self._max_line} bytes")]
                break
            line = bytes(self._buf[:nl + 1])
            del self._buf[:nl + 1]
            if len(line) > self._max_line:
                flush()
                return [*out, Stop(Reason.LINE_TOO_LONG, f"command line over {self._max_line} bytes")]
            if self._tail or self._sasl_tag is not None:
                # The rest of a command after its literal, or a SASL response for the backend.
                self._tail = False
                replies = None
            else:
                replies = self._line(line)
            if isinstance(replies, Stop):
                flush()
                return [*out, replies]
            if replies is None:
                to_backend += line
                m = LITERAL_END.search(line[-32:])
                if m:
                    self._literal = int(m.group(1))
                continue
            flush()
            out += replies
        flush()
        return out

    def _line(self, line: bytes) -> list[RelayAction] | Stop | None:
        """Handle one command line; None means pass it to the backend unchanged."""
        if self._ext_tag is not None:
            tag, self._ext_tag = self._ext_tag, None
            return self._external(tag, strip_eol(line))
        words = strip_eol(line).split(b" ")
        if len(words) < 2 or not valid_tag(words[0]):
            return None
        tag, verb = words[0], words[1].upper()
        if tag in self._inflight or tag in self._watched:
            return [ToClient(tag + b" BAD Tag already in use\r\n")]
        if verb == b"AUTHENTICATE" and len(words) > 2 and words[2].upper() == b"EXTERNAL":
            if self._watched or self._sasl_tag is not None:
                return [ToClient(tag + b" BAD Another login is in progress\r\n")]
        else:
            if len(self._inflight) >= MAX_INFLIGHT:
                return Stop(Reason.CLIENT_PROTOCOL, f"over {MAX_INFLIGHT} commands pipelined before login")
            self._inflight.add(tag)
            if verb == b"LOGIN" or verb == b"AUTHENTICATE":
                self._watched[tag] = None   # the client's own login: the backend decides
                if verb == b"AUTHENTICATE":
                    self._sasl_tag = tag
            return None
        if len(words) > 4:
            return [ToClient(tag + b" BAD Syntax: AUTHENTICATE EXTERNAL [initial-response]\r\n")]
        if len(words) == 4:
            return self._external(tag, words[3])
        self._ext_tag = tag
        return [ToClient(b"+ \r\n")]

    def _external(self, tag: bytes, response: bytes) -> list[RelayAction]:
        if response == b"*":
            return [ToClient(tag + b" BAD Authentication canceled\r\n")]
        try:
            authzid = decode_external(response.decode("ascii"))
        except (SaslError, UnicodeDecodeError) as exc:
            return [ToClient(tag + b" BAD Invalid base64 response\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": "malformed", "detail": str(exc)})]
        decision = self._decide(authzid)
        if decision.mailbox is None:
            # RFC 5530: AUTHENTICATIONFAILED; the reason stays in the proxy's log, not on the wire.
            return [ToClient(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": decision.reason,
                                    "authzid": safe_text(authzid.encode("utf-8", "replace")),
                                    "detail": decision.detail})]
        try:
            plain = plain_response(decision.mailbox, self._master_user, self._master_password)
        except ValueError:
            return [ToClient(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": "bad_mailbox",
                                    "authzid": safe_text(authzid.encode("utf-8", "replace"))})]
        self._watched[tag] = decision.mailbox
        self._inflight.add(tag)
        # SASL-IR (RFC 4959): one round trip; Dovecot advertises and accepts it.
        return [ToBackend(tag + b" AUTHENTICATE PLAIN " + plain.encode("ascii") + b"\r\n")]
