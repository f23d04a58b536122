"""IMAP, sans-IO: the pre-TLS dialog with the client, and the IMAP syntax every IMAP module shares.

Owns: what sniproxy says to an IMAP client before TLS (RFC 9051 §6.1, §6.2.1 STARTTLS), the ``BYE``
the proxy says on TLS when the backend cannot serve, and the one copy of the IMAP syntax the relay
(``imap_relay``, ``imap_auth``) reads too: what a valid tag is, where a literal is announced. Must not
do I/O, keep a clock or log: it is fed bytes and returns ``Action`` values. The post-TLS relay is
``imap_relay.ImapRelay``.
"""

from __future__ import annotations

import re

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.pretls import PreTlsDialog, State, flush, one_line

CAPABILITIES = b"IMAP4rev1 STARTTLS LOGINDISABLED"

# RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]";
# ATOM-CHAR excludes "(" ")" "{" SP CTL "%" "*" DQUOTE "\". Only a valid tag is ever echoed back.
_TAG = re.compile(rb'[\x21-\x7e]+')
_TAG_FORBIDDEN = frozenset(b'(){%*"\\+')
# RFC 9051 §4.3: a literal is announced by "{" number "}" (or "{n+}" LITERAL+, "~{n}" literal8,
# RFC 3516) at the very end of a line; its bytes follow the CRLF and are not lines.
LITERAL_END = re.compile(rb"\{(\d{1,20})\+?\}\r?\n\Z")


def imap_unavailable(detail: str) -> bytes:
    """Untagged BYE sent on TLS when the backend cannot serve (RFC 9051 §7.1.5, §7.1 UNAVAILABLE)."""
    return b"* BYE [UNAVAILABLE] " + one_line(detail) + b"\r\n"


def valid_tag(tag: bytes) -> bool:
    """True when ``tag`` is an IMAP tag (RFC 9051 §9): only such a tag is ever echoed back or tracked."""
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

    def _too_long(self) -> bytes:
        return b"* BYE Line too long\r\n"

    def _too_many(self) -> bytes:
        return b"* BYE Too many commands\r\n"

    def _command(self, line: bytes, out: bytearray) -> list[Action] | None:
        """Answer one command into ``out``; return the final action list when the dialog ends."""
        tag, sp, rest = line.partition(b" ")
        command, _, args = rest.partition(b" ")
        if not sp or not command or not valid_tag(tag):
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
            return flush(out, b"* BYE " + self._hostname + b" logging out\r\n" + tag
                          + b" OK LOGOUT completed\r\n", Stop(Reason.CLIENT_QUIT))
        elif verb == b"STARTTLS":
            if len(self._lines):
                # Bytes after STARTTLS arrived before our OK: a client cannot legitimately have
                # sent them (RFC 9051 §6.2.1: TLS starts right after the tagged OK), so they are
                # an injection attempt. Never start TLS with them pending.
                self._move(State.CLOSED)
                return flush(out, tag + b" BAD [CLIENTBUG] Data pipelined after STARTTLS\r\n",
                              Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS"))
            self._move(State.TLS)
            return flush(out, tag + b" OK Begin TLS negotiation now\r\n", StartTls())
        elif verb in (b"LOGIN", b"AUTHENTICATE"):
            out += tag + b" NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
        else:
            out += tag + b" BAD Command unknown or not allowed before STARTTLS\r\n"
        return None
