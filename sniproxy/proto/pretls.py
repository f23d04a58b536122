"""What the IMAP and SMTP pre-TLS dialogs share: the state machine, the limits, the hostname.

Sans-IO like the dialogs themselves. Each protocol module adds its greeting and commands.
"""

from __future__ import annotations

from enum import Enum

from sniproxy.proto.linebuf import LineBuffer


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


class PreTlsDialog:
    """Base of ``ImapPreTls`` and ``SmtpPreTls``: line buffer, command count, state."""

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
