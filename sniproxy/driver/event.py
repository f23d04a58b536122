"""The one ``connection`` event each connection ends with: its fields, its outcome, who hears it.

Owns: the event's field names and order (the log contract of docs/migration.md and the report
reader), the ``outcome`` classification, the per-connection metrics and the ``OBSERVERS`` calls.
Must not: change connection state; it reads a finished connection's facts.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from time import monotonic
from typing import TYPE_CHECKING, Any

from sniproxy.card import identity_fields
from sniproxy.driver.shared import OBSERVERS
from sniproxy.errors import Reason
from sniproxy.observability.log import get_logger
from sniproxy.observability.metrics import connection_ended

if TYPE_CHECKING:
    from sniproxy.driver.front import ClientConnection

_log = get_logger("sniproxy.connection")
_NOT_REFUSALS = frozenset({Reason.OK, Reason.CLIENT_QUIT, Reason.CLIENT_CLOSED, Reason.CLIENT_RESET,
                           Reason.SHUTDOWN})


def outcome(reason: Reason) -> str:
    """``ok`` for a served connection, ``closed`` when the client left early, else ``refused``."""
    if reason is Reason.OK:
        return "ok"
    return "closed" if reason in _NOT_REFUSALS else "refused"


def log_connection(conn: ClientConnection, phase: str, extra: dict[str, Any]) -> None:
    """Log the event of a finished connection (``phase``: where it was; ``extra``: its back half's fields)."""
    reason = conn.reason or Reason.INTERNAL_ERROR
    event: dict[str, Any] = {
        "conn_id": conn.id,
        "listener": conn.lr.listener.name,
        "peer": conn.peer,
        "flow": conn.flow,
        "sni": conn.sni,
        "reason": reason.value,
        "phase": phase,
        "bytes_in": conn.bytes_in,
        "bytes_out": conn.bytes_out,
        "duration_ms": round((monotonic() - conn.started) * 1000, 1),
    }
    if conn.detail:
        event["detail"] = conn.detail
    tls = conn.tls
    if tls is not None and tls.established:
        event["tls_version"] = tls.version
        event["cipher"] = tls.cipher
    if tls is not None and tls.state.authority:
        event["authority"] = tls.state.authority
    if tls is not None and tls.state.revoked is not None:
        rv = tls.state.revoked
        when = datetime.fromtimestamp(rv.date, UTC).isoformat() if rv.date is not None else None
        event["revocation"] = {"serial": f"{rv.serial:x}", "reason_code": rv.reason,
                               "reason": rv.reason_name, "date": when}
    if tls is not None and tls.state.crl_grace:
        event["crl_grace"] = tls.state.crl_grace
    identity = identity_fields(conn.card)
    if identity:
        event["identity"] = identity
    if conn.via is not None:
        event["via"] = conn.via
    event.update(extra)
    event["outcome"] = outcome(reason)
    ls = conn.lr.listener
    connection_ended(ls.name, ls.protocol.value, conn.flow, event["outcome"], reason.value,
                     conn.bytes_in, conn.bytes_out)
    for observer in OBSERVERS:
        observer(event)
    log: Callable[..., None] = _log.info if event["outcome"] != "refused" else _log.warning
    log("connection", **event)
