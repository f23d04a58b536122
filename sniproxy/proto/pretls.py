"""What the IMAP and SMTP pre-TLS dialogs share: the state machine, the limits, the hostname.

Sans-IO like the dialogs themselves. Each protocol module adds its greeting and commands.
"""

from __future__ import annotations

from enum import Enum

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Send, Stop
from sniproxy.proto.linebuf import LineBuffer, LineTooLong, strip_eol


class State(Enum):
    """Where a pre-TLS dialog is."""

    DIALOG = "dialog"
    TLS = "tls"          # StartTls returned: the dialog is over, the caller runs the handshake
    CLOSED = "closed"


# Transition table: the only moves a pre-TLS dialog makes.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.DIALOG: frozenset({State.TLS, State.CLOSED}),
    State.TLS: frozenset(),
    State.CLOSED: frozenset(),
}


def one_line(text: str) -> bytes:
    """ASCII bytes of ``text`` with no CR/LF, so a reply can never be split by its content."""
    return text.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def flush(out: bytearray, last: bytes, action: Action) -> list[Action]:
    """One coalesced ``Send`` of everything answered so far plus ``last``, then ``action``."""
    return [Send(bytes(out) + last), action]


class PreTlsDialog:
    """Base of ``ImapPreTls`` and ``SmtpPreTls``: line buffer, command count, state, the command loop.

    A protocol adds its greeting, its words for the two limits (``_too_long``, ``_too_many``) and
    ``_command``, which answers one line into ``out`` or returns the final actions.
    """

    __slots__ = ("_commands", "_hostname", "_lines", "_max_commands", "_state")

    def __init__(self, hostname: str, max_line: int = 8192, max_commands: int = 32) -> None:
        if any(c in hostname for c in "\r\n\0") or not hostname.isascii():
            raise ValueError("hostname must be one line of ASCII")
        self._hostname = hostname.encode("ascii")
        self._lines = LineBuffer(max_line)
        self._max_commands = max_commands
        self._commands = 0
        self._state = State.DIALOG

    @property
    def finished(self) -> bool:
        """True once ``StartTls`` or ``Stop`` was returned; later input is ignored."""
        return self._state is not State.DIALOG

    def _move(self, new: State) -> None:
        assert new in TRANSITIONS[self._state], (self._state, new)
        self._state = new

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
                return flush(out, self._too_long(), Stop(Reason.LINE_TOO_LONG))
            if line is None:
                return [Send(bytes(out))] if out else []
            self._commands += 1
            if self._commands > self._max_commands:
                self._move(State.CLOSED)
                return flush(out, self._too_many(), Stop(Reason.TOO_MANY_COMMANDS))
            final = self._command(strip_eol(line), out)
            if final is not None:
                return final

    def _too_long(self) -> bytes:
        """The protocol's last words for a command line over the limit."""
        raise NotImplementedError

    def _too_many(self) -> bytes:
        """The protocol's last words for one command too many before STARTTLS."""
        raise NotImplementedError

    def _command(self, line: bytes, out: bytearray) -> list[Action] | None:
        """Answer one command line (without its end of line) into ``out``, or return the final actions."""
        raise NotImplementedError
