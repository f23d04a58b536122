"""Actions returned by the sans-IO protocol dialogs.

Inputs are bytes; outputs are these frozen values, named as imperatives. The connection driver
(``sniproxy.connection``) is the only code that turns them into I/O. ``Stop`` is the one way every
dialog, before TLS or after it (``proto.relay``), ends a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from sniproxy.errors import Reason


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the peer the dialog speaks to (the client for pre-TLS dialogs)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    """The client asked for TLS and was told to go ahead: start the TLS handshake now.

    The dialog guarantees no byte the client sent after the STARTTLS command is kept.
    """


@dataclass(frozen=True, slots=True)
class Stop:
    """End the connection with this reason, after the actions before it."""

    reason: Reason
    detail: str = ""


Action = Send | StartTls | Stop
