"""SMTP, sans-IO: the pre-TLS dialog with the client.

Owns: what sniproxy says to an SMTP client before STARTTLS (RFC 5321, RFC 3207), and the reply it
gives when the backend is unavailable. Must not do I/O, keep a clock or log: it is fed bytes and
returns ``Action`` values. After TLS, both directions go through ``smtp_relay.SmtpRelay``.
"""

from __future__ import annotations

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.pretls import PreTlsDialog, State, flush, one_line

_OK = b"250 2.0.0 OK\r\n"
_SYNTAX = b"501 5.5.4 Syntax error in parameters\r\n"
_NEED_TLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"   # RFC 3207 §4


def smtp_unavailable(detail: str) -> bytes:
    """Reply sent on TLS when the backend cannot serve (RFC 5321 §3.8: 421, then close)."""
    return b"421 4.3.0 " + one_line(detail) + b"\r\n"


class SmtpPreTls(PreTlsDialog):
    """The SMTP dialog before STARTTLS: greet, answer EHLO/HELO/NOOP/RSET/QUIT, start TLS.

    No mail transaction and no AUTH is accepted (530, RFC 3207 §4). ``PIPELINING`` is not
    advertised, so a conforming client waits for each reply (RFC 2920 §3.1), and any byte pipelined
    after ``STARTTLS`` closes the connection instead of starting TLS (the CVE-2011-0411 class).
    """

    __slots__ = ()

    def greeting(self) -> list[Action]:
        """The 220 service-ready greeting (RFC 5321 §4.2, §3.1)."""
        return [Send(b"220 " + self._hostname + b" ESMTP ready\r\n")]

    def _too_long(self) -> bytes:
        # RFC 5321 §4.5.3.1.4 gives 500 for a too-long command line; we then close.
        return b"500 5.5.0 Line too long\r\n421 4.7.0 " + self._hostname + b" Closing connection\r\n"

    def _too_many(self) -> bytes:
        return b"421 4.7.0 " + self._hostname + b" Too many commands, closing connection\r\n"

    def _command(self, line: bytes, out: bytearray) -> list[Action] | None:
        """Answer one command into ``out``; return the final action list when the dialog ends."""
        verb, _, args = line.partition(b" ")
        verb = verb.upper()
        if not verb:
            out += b"500 5.5.2 Syntax error, command unrecognized\r\n"
        elif verb == b"EHLO":
            if not args.strip():
                out += b"501 5.5.4 Syntax: EHLO hostname\r\n"
            else:
                # RFC 5321 §4.1.1.1; no PIPELINING and no AUTH before TLS (RFC 4954 §4 allows
                # hiding AUTH until TLS, and it is the only way to keep passwords off the wire).
                out += (b"250-" + self._hostname + b"\r\n250-8BITMIME\r\n"
                        b"250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n")
        elif verb == b"HELO":
            if args.strip():
                out += b"250 " + self._hostname + b"\r\n"
            else:
                out += b"501 5.5.4 Syntax: HELO hostname\r\n"
        elif verb == b"NOOP":
            out += _OK           # RFC 5321 §4.1.1.9: NOOP may carry a string, ignored
        elif verb in (b"RSET", b"QUIT", b"STARTTLS") and args:
            out += _SYNTAX       # RFC 5321 §4.1.1.5, §4.1.1.10, RFC 3207 §4: no parameters
        elif verb == b"RSET":
            out += _OK
        elif verb == b"QUIT":
            self._move(State.CLOSED)
            return flush(out, b"221 2.0.0 Bye\r\n", Stop(Reason.CLIENT_QUIT))
        elif verb == b"STARTTLS":
            if len(self._lines):
                # RFC 3207 §4.2 and RFC 2920 §3.1: STARTTLS must be the last command of a group;
                # bytes already queued behind it would be read as if sent over TLS. Refuse.
                self._move(State.CLOSED)
                return flush(out, b"554 5.5.1 Error: command pipelined after STARTTLS\r\n",
                              Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS"))
            self._move(State.TLS)
            return flush(out, b"220 2.0.0 Ready to start TLS\r\n", StartTls())
        else:
            out += _NEED_TLS     # MAIL, RCPT, DATA, BDAT, AUTH, VRFY, EXPN and the unknown
        return None
