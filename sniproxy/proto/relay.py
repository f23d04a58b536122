"""Actions of the two-sided relay dialogs (``smtp_relay``, ``imap_auth``): they sit between the
client's plaintext and the backend, so each output names its direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sniproxy.errors import Reason


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


@dataclass(frozen=True, slots=True)
class Stop:
    """End the connection with this reason (after the actions before it)."""

    reason: Reason
    detail: str = ""


RelayAction = ToClient | ToBackend | Notice | Stop
