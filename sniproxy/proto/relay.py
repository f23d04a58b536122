"""The post-TLS mail relay: one interface and one action vocabulary for IMAP and SMTP.

Owns ``MailRelay``, what the connection driver calls once the client is on TLS and the backend is
connected (``imap_relay.ImapRelay``, ``smtp_relay.SmtpRelay``), and the actions it returns. Each
action names its direction, so both directions speak one vocabulary. Must not do I/O or log: the
driver is the only code that turns these actions into writes, log lines and a close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sniproxy.proto.actions import Stop

__all__ = ["MailRelay", "Notice", "RelayAction", "Stop", "ToBackend", "ToClient"]


@dataclass(frozen=True, slots=True)
class ToClient:
    """Bytes for the client (encrypted by the driver)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToBackend:
    """Bytes for the backend."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the driver logs (``auth``, ``client_identity_refused``...) and keeps for the connection event."""

    event: str
    fields: dict[str, Any] = field(default_factory=dict)


RelayAction = ToClient | ToBackend | Notice | Stop
"""``Stop`` (from ``proto.actions``, shared with the pre-TLS dialogs) is always the last action of a list.
A ``Stop`` with ``BACKEND_PROTOCOL`` or ``BACKEND_REFUSED`` is the backend's failure: the driver tells the
client the service is unavailable, in the protocol's words, before it closes."""


class MailRelay(Protocol):
    """Both directions of one mail session after TLS (IMAP or SMTP), fed bytes, returning actions in order.

    The driver holds the client's bytes until ``ready`` (the backend's opening is accepted), then feeds
    every chunk from either side here and carries out the actions it gets back, in order, up to a ``Stop``.
    """

    @property
    def ready(self) -> bool:
        """True once the backend's opening is done: the driver may start relaying the client's bytes."""

    def from_client(self, data: bytes) -> list[RelayAction]:
        """Feed client plaintext (only once ``ready``)."""

    def from_backend(self, data: bytes) -> list[RelayAction]:
        """Feed backend bytes."""

    def backend_closed(self) -> list[RelayAction]:
        """The backend's stream ended (not a ``Stop`` of ours): what the client is still owed."""
