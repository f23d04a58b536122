"""The supervisor's control surface, as the admin endpoint (and ``sniproxy reload``) see it.

Owns: the ``Control`` protocol the supervisor implements and the ``ReloadResult`` it reports.
Must not: import the supervisor, the admin endpoint or anything that opens sockets, so either side
can depend on it without a cycle (docs/decisions/0005-process-model.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sniproxy.runtime.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload did: ``ok`` and the generation now serving, or the errors that refused it.

    ``errors`` are ``file:line: key.path: message`` lines, exactly as ``sniproxy check`` prints them
    (without its ``error:`` prefix). On a refusal ``generation`` is the one still serving.
    """

    ok: bool
    generation: int
    errors: tuple[str, ...] = ()


class Control(Protocol):
    """What the supervisor offers its admin endpoint (implemented by ``sniproxy.lifecycle.supervisor.Supervisor``)."""

    @property
    def generation(self) -> int:
        """The config generation serving now (1 at start, +1 per valid reload or applied cutover)."""
        ...

    @property
    def draining(self) -> bool:
        """True from the first instant of a drain (SIGTERM, SIGINT or ``drain()``) to the exit."""
        ...

    def workers_ready(self) -> bool:
        """Every worker is up, serving the current generation, with all its listeners bound."""
        ...

    async def reload(self) -> ReloadResult:
        """Re-read the config file, validate it as ``sniproxy check`` does, and swap it in every worker."""
        ...

    def drain(self) -> None:
        """Start a graceful drain (as SIGTERM does); the process exits when it is over."""
        ...

    @property
    def snapshot(self) -> Snapshot:
        """The current compiled config (CRL sources for readiness, flow names for metric labels)."""
        ...


__all__ = ["Control", "ReloadResult"]
