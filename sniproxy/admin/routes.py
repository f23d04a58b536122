"""The admin endpoint's routes: health, readiness, metrics, reload, drain, migration page.

Owns what each path answers and the readiness rule (config loaded, every worker's listeners
bound, every required CRL fresh, not draining). Talks to the process through the ``Control``
interface the supervisor implements (``sniproxy.control``), and to the CRL fetcher through a
``crl_problems`` callable; does no socket I/O (see ``server``).
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sniproxy.admin.http import Request, Response, text
from sniproxy.observability.log import get_logger

_log = get_logger("sniproxy.admin")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReloadOutcome(Protocol):
    """What ``Control.reload`` returns (``sniproxy.control.ReloadResult``)."""

    @property
    def ok(self) -> bool: ...
    @property
    def generation(self) -> int: ...
    @property
    def errors(self) -> tuple[str, ...]: ...


class ControlLike(Protocol):
    """The part of ``sniproxy.control.Control`` the admin endpoint uses."""

    @property
    def generation(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    def workers_ready(self) -> bool: ...
    async def reload(self) -> ReloadOutcome: ...
    def drain(self) -> None: ...


def live_report() -> Any:
    """The ``sniproxy.report.live`` module (issue 15) when this build has it, else None."""
    try:
        return importlib.import_module("sniproxy.report.live")
    except ModuleNotFoundError as exc:
        if exc.name not in ("sniproxy.report", "sniproxy.report.live"):
            raise   # the module exists but lacks one of its own imports: a broken build, said loud
        return None


def _no_problems() -> list[str]:
    return []


@dataclass(slots=True)
class AdminApp:
    """Everything the routes read: the process control, CRL readiness, the metrics scrape, the live dumps."""

    control: ControlLike | None
    crl_problems: Callable[[], list[str]] = _no_problems
    scrape: Callable[[], bytes] | None = None       # blocking (reads files): run in a thread
    live_dir: Path | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)


def not_ready_reasons(app: AdminApp) -> list[str]:
    """Why the pod must not get traffic (empty when ready)."""
    control = app.control
    if control is None:
        return ["config not loaded"]
    reasons: list[str] = []
    if control.draining:
        reasons.append("draining")
    if not control.workers_ready():
        reasons.append("workers not ready: listeners not bound in every worker")
    reasons += [f"crl: {p}" for p in app.crl_problems()]
    return reasons


_ROUTES: dict[str, tuple[str, ...]] = {
    "/healthz": ("GET", "HEAD"),
    "/readyz": ("GET", "HEAD"),
    "/metrics": ("GET", "HEAD"),
    "/reload": ("POST",),
    "/drain": ("POST",),
    "/migration": ("GET", "HEAD"),
}


async def handle(app: AdminApp, req: Request) -> Response:
    """The response to one request."""
    allowed = _ROUTES.get(req.path)
    if allowed is None:
        return text(404, f"no such page: {req.path}")
    if req.method not in allowed:
        return text(405, f"{req.path} takes {' or '.join(allowed)}", Allow=", ".join(allowed))
    if req.path == "/healthz":
        return text(200, "ok")
    if req.path == "/readyz":
        reasons = not_ready_reasons(app)
        return text(503, "not ready\n" + "\n".join(reasons)) if reasons else text(200, "ready")
    if req.path == "/metrics":
        if app.scrape is None:
            return text(404, "metrics are not collected in this process")
        body = await asyncio.to_thread(app.scrape)
        return Response(200, body, METRICS_TYPE)
    if req.path == "/migration":
        return await _migration(app)
    if app.control is None:
        return text(503, "not started")
    if req.path == "/drain":
        _log.info("admin_drain")
        app.control.drain()
        return text(202, "draining")
    return await _reload(app)


async def _reload(app: AdminApp) -> Response:
    assert app.control is not None
    async with app._reloading:     # one at a time: a second request waits for the first's result
        result = await app.control.reload()
    _log.info("admin_reload", ok=result.ok, generation=result.generation, errors=list(result.errors))
    body = json.dumps({"ok": result.ok, "generation": result.generation, "errors": list(result.errors)})
    return Response(200 if result.ok else 422, (body + "\n").encode(), "application/json")


async def _migration(app: AdminApp) -> Response:
    """The live migration report (``sniproxy.report.live``), when that module and its dumps exist."""
    live = live_report()
    if app.live_dir is None or live is None:
        return text(404, "no live migration report in this build")
    html = await asyncio.to_thread(live.render_live, app.live_dir)
    return Response(200, str(html).encode("utf-8"), "text/html; charset=utf-8")
