"""SMTP after TLS, both directions, on every SMTP listener (sans-IO).

Owns, for a backend such as Postfix (which may trust the proxy's address for XCLIENT):
- with ``xclient`` (``identity: xclient``), the backend opening: greeting, ``EHLO``, check
  ``XCLIENT`` is offered, ``XCLIENT ADDR PORT PROTO HELO``, the new ``220`` greeting (passed to the
  client on implicit TLS, swallowed after STARTTLS); without it, the greeting only;
- the client's commands, for the whole session, re-emitted in one canonical form so the backend
  parses exactly what the proxy parsed: a command line with a control character (tab, bare CR, NUL)
  or leading white space is answered ``500`` here, a verb outside the SMTP submission set ``502``;
  ``XCLIENT``/``XFORWARD`` from the client are answered ``550`` and never reach the backend (which
  trusts this proxy's address); ``AUTH EXTERNAL`` is answered here when a login rule is configured
  (``XCLIENT LOGIN=`` then a fresh ``EHLO`` to the backend, then ``235`` to the client); a client's
  own ``AUTH`` holds the client until the backend answers, and its SASL responses must be base64;
  ``BDAT`` is refused (``CHUNKING`` is hidden) so message data is always ``DATA`` ... ``.``, passed
  with every line end rewritten to CRLF (a run of CRs before LF counts as one line end, as Postfix
  reads it), so the proxy and the backend always agree where the data ends;
- the backend's replies, correlated one to one with the commands sent (pipelining), with EHLO
  keywords the client must not use hidden (``STARTTLS``, ``XCLIENT``, ``XFORWARD``, ``CHUNKING``) and
  ``EXTERNAL`` added to ``AUTH`` when the proxy answers it.
No I/O: bytes in, ``ToClient``/``ToBackend``/``Notice``/``Stop`` out (the ``MailRelay`` of SMTP listeners,
``proto.relay``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from enum import Enum, auto

from sniproxy.auth.login import LoginDecision
from sniproxy.auth.sasl import SaslError, decode_external, xtext
from sniproxy.errors import Reason
from sniproxy.proto.linebuf import safe_text, strip_eol
from sniproxy.proto.netaddr import peer_ip
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient

_REPLY = re.compile(rb"^([2-5][0-9][0-9])([ -])")
_HIDDEN_EHLO = frozenset({b"STARTTLS", b"XCLIENT", b"XFORWARD", b"CHUNKING", b"BINARYMIME"})
_EOL = re.compile(rb"\r*\n")
# Control characters, tab included: Postfix splits commands on any white space, the proxy on spaces only.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_SASL_RESPONSE = re.compile(rb"[A-Za-z0-9+/]*={0,2}|\*")
#: Verbs a submission client may send (RFC 5321, 4954, 3461); anything else never reaches the backend.
_VERBS = frozenset({b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"HELP",
                    b"AUTH", b"EXPN", b"ETRN"})
HOLD_MAX = 1 << 20        # client bytes held while the backend decides (DATA, a login): 1 MiB
LONG_DATA_LINE = 1 << 16  # a message line longer than this without LF is passed on in parts
# A backend reply is assembled whole before it is rewritten (EHLO) or passed on: Postfix's longest is
# well under 1 KiB, so 64 KiB is generous, and it bounds what a broken backend can make us hold.
MAX_REPLY = 1 << 16

Decide = Callable[[str], LoginDecision]


class Phase(Enum):
    """The backend opening, driven by the backend's replies: ``GREETING`` -> (``EHLO`` -> ``XCLIENT``) -> ``READY``."""

    GREETING = auto()
    EHLO = auto()
    XCLIENT = auto()
    READY = auto()


class Mode(Enum):
    """What the client's next bytes are, once ``READY``."""

    COMMAND = auto()      # command lines, filtered
    HOLD = auto()         # kept until the backend answers (DATA, AUTH, a login)
    CONTENT = auto()      # message data, until the line "."
    AUTH_RESP = auto()    # a SASL response for the backend (the client's own AUTH)
    EXT_RESP = auto()     # the response to the proxy's "334" (AUTH EXTERNAL without initial response)


class Expect(Enum):
    """What a backend reply still due answers (the queue also holds the proxy's own replies, as bytes)."""

    EHLO = auto()
    DATA = auto()
    AUTH = auto()
    XCLIENT_LOGIN = auto()
    EHLO_LOGIN = auto()
    DOT = auto()
    OTHER = auto()
    UNSOLICITED = auto()  # a reply with nothing due (never queued)


def _text(lines: list[bytes]) -> str:
    """A reply's text (its lines without code and separator), printable, for a log detail.

    Built only where a detail needs it: a session's replies are passed on as bytes, never decoded.
    """
    return safe_text(b" ".join(strip_eol(x[4:]) for x in lines))


def _xclient_addr(host: str) -> str:
    addr = peer_ip(host)
    if addr is None:                # not an IP address (a Unix socket): Postfix's word for unknown
        return "[UNAVAILABLE]"
    return f"IPV6:{addr}" if addr.version == 6 else str(addr)


class SmtpRelay:
    """Both directions of one SMTP session through the proxy (with or without the XCLIENT opening)."""

    def __init__(self, *, client_addr: tuple[str, int], helo: str, hostname: str,
                 consume_greeting: bool, decide: Decide | None, max_line: int = 8192, xclient: bool = True) -> None:
        """``xclient=False``: no XCLIENT opening and no proxy-side login, the command filter only
        (a backend reached with ``identity: none`` or ``proxy-v2`` may trust this proxy's address for
        XCLIENT too, so the client's own must never reach it)."""
        self._client_addr = client_addr
        self._helo = helo or "[UNAVAILABLE]"   # Postfix's XCLIENT word for "not known"
        self._hostname = hostname
        self._consume = consume_greeting
        self._decide = decide
        self._max_line = max_line
        self._xclient = xclient
        if not xclient:
            self._decide = None
        self._phase = Phase.GREETING
        self._reply: list[bytes] = []     # lines of the backend reply being assembled
        self._reply_size = 0              # their bytes, bounded by MAX_REPLY
        self._bline = bytearray()         # unterminated backend line
        # What each expected backend reply answers (a str), and the proxy's own replies (bytes) to
        # commands pipelined after them, released in order (RFC 2920: replies in command order).
        self._queue: deque[Expect | bytes] = deque()
        self._cbuf = bytearray()          # client bytes not yet processed
        self._mode = Mode.COMMAND
        self._line_start = True           # in content: the next byte starts a line
        self._ehlo_ok = False             # the client's EHLO/HELO was accepted
        self._authenticated = False
        self._mailbox: str | None = None
        self.ready = False

    # ------------------------------------------------------------------ backend -> proxy
    def from_backend(self, data: bytes) -> list[RelayAction]:
        """Feed backend bytes."""
        out: list[RelayAction] = []
        self._bline += data
        while True:
            nl = self._bline.find(b"\n")
            if nl < 0:
                if len(self._bline) > self._max_line:
                    return [*out, Stop(Reason.BACKEND_PROTOCOL, "reply line too long")]
                break
            line = bytes(self._bline[:nl + 1])
            del self._bline[:nl + 1]
            m = _REPLY.match(line)
            if m is None:
                return [*out, Stop(Reason.BACKEND_PROTOCOL, f"not an SMTP reply: {safe_text(line)}")]
            if self._reply_size + len(line) > MAX_REPLY:
                return [*out, Stop(Reason.BACKEND_PROTOCOL, f"reply over {MAX_REPLY} bytes")]
            self._reply.append(line)
            self._reply_size += len(line)
            if m.group(2) == b" ":
                reply, self._reply, self._reply_size = self._reply, [], 0
                out += self._on_reply(int(m.group(1)), reply)
                if out and isinstance(out[-1], Stop):
                    return out
                while self._queue and isinstance(self._queue[0], bytes):
                    local = self._queue.popleft()
                    assert isinstance(local, bytes)
                    out.append(ToClient(local))
        # Held client bytes may now be processed (after 354, a login, or the opening dance).
        if self.ready and self._mode is not Mode.HOLD and self._cbuf:
            out += self._client_process()
        return out

    def _on_reply(self, code: int, lines: list[bytes]) -> list[RelayAction]:
        if self._phase is not Phase.READY:
            return self._opening(code, lines)
        return self._answer(code, lines)

    def _opening(self, code: int, lines: list[bytes]) -> list[RelayAction]:
        """One reply of the backend opening (greeting, EHLO, XCLIENT), before the session is relayed."""
        if self._phase is Phase.GREETING:
            if code != 220:
                return [Stop(Reason.BACKEND_REFUSED, f"{code} {_text(lines)}")]
            if not self._xclient:
                self._phase, self.ready = Phase.READY, True
                return [] if self._consume else [ToClient(b"".join(lines))]
            self._phase = Phase.EHLO
            return [ToBackend(f"EHLO {self._hostname}\r\n".encode())]
        if self._phase is Phase.EHLO:
            keywords = {strip_eol(x[4:]).split(b" ", 1)[0].upper() for x in lines[1:]}
            if code != 250 or b"XCLIENT" not in keywords:
                return [Stop(Reason.BACKEND_PROTOCOL, "backend does not offer XCLIENT to the proxy "
                                                      "(smtpd_authorized_xclient_hosts)")]
            self._phase = Phase.XCLIENT
            host, port = self._client_addr
            # NAME: the proxy does no reverse DNS; Postfix then logs the client as "unknown".
            cmd = (f"XCLIENT ADDR={xtext(_xclient_addr(host))} PORT={port} PROTO=ESMTP "
                   f"HELO={xtext(self._helo)} NAME=[UNAVAILABLE]\r\n")
            return [ToBackend(cmd.encode())]
        # Phase.XCLIENT: the answer to the XCLIENT command, a new greeting.
        if code != 220:
            return [Stop(Reason.BACKEND_REFUSED, f"XCLIENT refused: {code} {_text(lines)}")]
        self._phase = Phase.READY
        self.ready = True
        return [] if self._consume else [ToClient(b"".join(lines))]

    def _answer(self, code: int, lines: list[bytes]) -> list[RelayAction]:
        """One reply of the relayed session, to the command at the head of the queue (RFC 2920 order)."""
        kind = self._queue.popleft() if self._queue else Expect.UNSOLICITED
        assert isinstance(kind, Expect)   # proxy replies are released as soon as they reach the head
        if kind is Expect.EHLO:
            self._ehlo_ok = self._ehlo_ok or code == 250
            return [ToClient(self._rewrite_ehlo(lines))]
        if kind is Expect.DATA:
            self._mode = Mode.CONTENT if code == 354 else Mode.COMMAND
            self._line_start = True
            return [ToClient(b"".join(lines))]
        if kind is Expect.AUTH:
            if code == 334:
                self._mode = Mode.AUTH_RESP
            else:
                self._mode = Mode.COMMAND
                self._authenticated = self._authenticated or code == 235
            return [ToClient(b"".join(lines))]
        if kind is Expect.XCLIENT_LOGIN:
            if code != 220:
                self._mode = Mode.COMMAND
                return [ToClient(b"454 4.7.0 Temporary authentication failure\r\n"),
                        Notice("auth", {"mechanism": "EXTERNAL", "result": "backend_refused",
                                        "mailbox": self._mailbox, "detail": f"{code} {_text(lines)}"})]
            self._queue.append(Expect.EHLO_LOGIN)
            return [ToBackend(f"EHLO {self._helo}\r\n".encode())]
        if kind is Expect.EHLO_LOGIN:
            self._mode = Mode.COMMAND
            if code != 250:
                # The backend session is logged in already: the client must not go on as if it failed,
                # so the session ends (the driver answers 421 for a backend failure).
                text = _text(lines)
                return [Notice("auth", {"mechanism": "EXTERNAL", "result": "backend_refused",
                                        "mailbox": self._mailbox, "detail": f"{code} {text}"}),
                        Stop(Reason.BACKEND_PROTOCOL, f"EHLO after XCLIENT LOGIN refused: {code} {text}")]
            self._authenticated = True
            return [ToClient(b"235 2.7.0 Authentication successful\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": "ok", "mailbox": self._mailbox})]
        return [ToClient(b"".join(lines))]

    def _rewrite_ehlo(self, lines: list[bytes]) -> bytes:
        kept = [lines[0]]
        has_auth = False
        for line in lines[1:]:
            body = strip_eol(line[4:])
            word = body.split(b" ", 1)[0].upper()
            if word in _HIDDEN_EHLO:
                continue
            if word == b"AUTH" and self._decide is not None:
                has_auth = True
                if b"EXTERNAL" not in body.upper().split():
                    line = line[:4] + body + b" EXTERNAL\r\n"
            kept.append(line)
        if self._decide is not None and not has_auth:
            kept.append(kept[0][:3] + b"-AUTH EXTERNAL\r\n")
        # Separators: "-" on every line but the last (RFC 5321 §4.2.1).
        return b"".join(x[:3] + (b" " if i == len(kept) - 1 else b"-") + x[4:] for i, x in enumerate(kept))

    # ------------------------------------------------------------------ client -> proxy
    def backend_closed(self) -> list[RelayAction]:
        """Nothing: Postfix says its own ``421`` when it ends a session (and the proxy says it on a ``Stop``)."""
        return []

    def from_client(self, data: bytes) -> list[RelayAction]:
        """Feed client plaintext (call only once ``ready``)."""
        self._cbuf += data
        if self._mode is Mode.HOLD:
            if len(self._cbuf) > HOLD_MAX:
                return [Stop(Reason.CLIENT_PROTOCOL, "client sent too much while its command was pending")]
            return []
        return self._client_process()

    def _client_process(self) -> list[RelayAction]:
        out: list[RelayAction] = []
        while self._cbuf and self._mode is not Mode.HOLD:
            if self._mode is Mode.CONTENT:
                sent = self._content()
                if not sent:
                    break  # only a possible start of the end marker is left: wait for more bytes
                out += sent
                continue
            nl = self._cbuf.find(b"\n")
            if nl < 0:
                if len(self._cbuf) > self._max_line:
                    return [*out, Stop(Reason.LINE_TOO_LONG, f"command line over {self._max_line} bytes")]
                break
            line = bytes(self._cbuf[:nl + 1])
            del self._cbuf[:nl + 1]
            if len(line) > self._max_line:
                return [*out, Stop(Reason.LINE_TOO_LONG, f"command line over {self._max_line} bytes")]
            out += self._client_line(line)
            if out and isinstance(out[-1], Stop):
                return out
        return out

    def _content(self) -> list[RelayAction]:
        """Pass complete message lines on, every line end rewritten to CRLF, until a line ``.``.

        Rewriting (rather than finding the end leniently and passing bytes as they came) is what
        keeps the proxy and the backend in step: a line ``.\\r\\r\\n`` or ``.\\n`` ends the data for
        Postfix, so it ends it here, and the backend receives exactly ``.\\r\\n``.
        """
        buf = self._cbuf
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) <= LONG_DATA_LINE:
                return []          # wait for the rest of the line
            # A very long line cannot be the end marker: pass it on, but keep its trailing CRs,
            # which may belong to the line end still to come.
            cut = len(buf.rstrip(b"\r"))
            send = bytes(buf[:cut])
            del buf[:cut]
            self._line_start = False
            return [ToBackend(send)] if send else []
        norm = _EOL.sub(b"\r\n", bytes(buf[:last + 1]))
        rest = bytes(buf[last + 1:])
        pre = b"\r\n" if self._line_start else b""
        at = (pre + norm).find(b"\r\n.\r\n")
        if at < 0:
            self._cbuf = bytearray(rest)
            self._line_start = True
            return [ToBackend(norm)]
        end = at + 5 - len(pre)
        self._cbuf = bytearray(norm[end:] + rest)
        self._mode, self._line_start = Mode.COMMAND, True
        self._queue.append(Expect.DOT)
        return [ToBackend(norm[:end])]

    def _client_line(self, line: bytes) -> list[RelayAction]:
        # As Postfix reads a line: up to LF, every CR before it dropped.
        body = strip_eol(line).rstrip(b"\r")
        if self._mode is Mode.AUTH_RESP:
            # A SASL response for the backend: base64 or "*" only, so it cannot carry a command.
            self._mode = Mode.HOLD
            self._queue.append(Expect.AUTH)
            return [ToBackend((body if _SASL_RESPONSE.fullmatch(body) else b"*") + b"\r\n")]
        if self._mode is Mode.EXT_RESP:
            self._mode = Mode.COMMAND
            return self._external(body.decode("ascii", "replace"))
        if not body or body[:1] == b" " or _CONTROL.search(body):
            return self._local(b"500 5.5.2 Syntax error: control character or leading space in command\r\n")
        words = body.split()
        verb = words[0].upper()
        if verb in (b"XCLIENT", b"XFORWARD"):
            return [*self._local(b"550 5.7.0 " + verb + b" is not accepted from clients\r\n"),
                    Notice("client_identity_refused", {"command": verb.decode("ascii", "replace")})]
        if verb == b"BDAT":
            return self._local(b"502 5.5.1 BDAT is not available through this proxy, use DATA\r\n")
        if verb == b"STARTTLS":
            return self._local(b"503 5.5.1 TLS already active\r\n")
        if verb not in _VERBS:
            return self._local(b"502 5.5.2 Command not recognized\r\n")
        if verb == b"AUTH" and len(words) > 1 and words[1].upper() == b"EXTERNAL" and self._decide is not None:
            if self._queue:
                return self._local(b"503 5.5.1 AUTH must not be pipelined\r\n")
            if not self._ehlo_ok:
                return [ToClient(b"503 5.5.1 Send EHLO first\r\n")]
            if self._authenticated:
                return [ToClient(b"503 5.5.1 Already authenticated\r\n")]
            if len(words) > 2:
                return self._external(words[2].decode("ascii", "replace"))
            self._mode = Mode.EXT_RESP
            return [ToClient(b"334 \r\n")]
        if verb in (b"EHLO", b"HELO"):
            if len(words) > 1:
                self._helo = safe_text(words[1])
            self._queue.append(Expect.EHLO)
        elif verb == b"DATA":
            self._queue.append(Expect.DATA)
            self._mode = Mode.HOLD
        elif verb == b"AUTH":
            # Held until the backend answers: pipelined bytes after it could be read by the backend
            # as a SASL response and by the proxy as a command, or the other way round.
            self._queue.append(Expect.AUTH)
            self._mode = Mode.HOLD
        else:
            self._queue.append(Expect.OTHER)
        return [ToBackend(body + b"\r\n")]

    def _local(self, reply: bytes) -> list[RelayAction]:
        """A reply the proxy gives itself: now, or after the backend replies still due before it."""
        if self._queue:
            self._queue.append(reply)
            return []
        return [ToClient(reply)]

    def _external(self, response: str) -> list[RelayAction]:
        assert self._decide is not None
        if response == "*":
            return [ToClient(b"501 5.7.0 Authentication canceled\r\n")]
        try:
            authzid = decode_external(response)
        except SaslError as exc:
            return [ToClient(b"501 5.5.2 Cannot decode response\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": "malformed", "detail": str(exc)})]
        decision = self._decide(authzid)
        if decision.mailbox is None:
            return [ToClient(b"535 5.7.8 Authentication credentials invalid\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": decision.reason,
                                    "authzid": safe_text(authzid.encode("utf-8", "replace")),
                                    "detail": decision.detail})]
        self._mailbox = decision.mailbox
        self._mode = Mode.HOLD
        self._queue.append(Expect.XCLIENT_LOGIN)
        return [ToBackend(f"XCLIENT LOGIN={xtext(decision.mailbox)}\r\n".encode())]
