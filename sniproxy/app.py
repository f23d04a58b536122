"""Process start-up: ``sniproxy run`` hands its compiled config here, and the demo its in-process proxy.

Owns: what the process sets up once before the supervisor's loop (the open-files limit, the PID
file, the run directory of the metrics, the event loop policy) and the in-process listener start
(``start_listeners``). Must not: run workers, handle signals or reload (``sniproxy.lifecycle.supervisor``).
"""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

from sniproxy.driver.front import ClientConnection
from sniproxy.lifecycle.build import Built
from sniproxy.lifecycle.pidfile import AlreadyRunning, PidFile, runtime_dir
from sniproxy.lifecycle.supervisor import Supervisor, probe_binds
from sniproxy.observability import prom
from sniproxy.observability.log import get_logger
from sniproxy.runtime.snapshot import SnapshotHolder

_log = get_logger("sniproxy.app")
LIVE_ENV = "SNIPROXY_LIVE_DIR"   # where workers dump their live migration figures (sniproxy.report.live)



async def start_listeners(holder: SnapshotHolder, *, reuse_port: bool = False) -> list[asyncio.Server]:
    """Bind every listener address of the current snapshot in this process (the demo's in-process proxy)."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for lr in holder.current.listeners.values():
            name = lr.listener.name
            for addr in lr.listener.binds:
                srv = await loop.create_server(
                    lambda n=name: ClientConnection(holder, n),  # type: ignore[misc]
                    addr.host, addr.port, reuse_port=reuse_port, backlog=1024,
                )
                servers.append(srv)
    except BaseException:
        for srv in servers:
            srv.close()
        raise
    return servers


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (each connection holds two descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def run(source: Path, text: str, built: Built, workers: int) -> int:
    """Serve ``built`` (compiled from ``text``, the content of ``source``) with ``workers`` processes."""
    config = built.snapshot.config
    nofile = raise_fd_limit()
    limits = config.limits
    if 2 * limits.max_connections + 64 > nofile:
        _log.warning("fd_limit_low", open_files_limit=nofile, max_connections=limits.max_connections,
                     hint="each connection holds two descriptors: raise the limit (ulimit -n) or lower "
                          "limits.max_connections")
    pidfile = PidFile(runtime_dir(config))
    try:
        pidfile.acquire()
    except AlreadyRunning as exc:
        _log.error("already_running", error=str(exc), other_pid=exc.pid)
        return 1
    except OSError as exc:
        _log.error("pid_file_failed", error=str(exc), path=str(pidfile.path))
        return 1
    try:
        errors = probe_binds(built)
        if errors:
            _log.error("listen_failed", errors=errors)
            return 1
        _use_uvloop()
        run_dir = None
        if config.admin is not None:
            # Before any worker exists: each one finds the directory in its environment.
            run_dir = prom.make_run_dir(runtime_dir(config))
            prom.install(run_dir / "metrics")
            os.environ[LIVE_ENV] = str(run_dir / "live")
        try:
            return asyncio.run(Supervisor(source, text, built, workers, pidfile, run_dir).run())
        finally:
            if run_dir is not None:
                prom.remove_run_dir(run_dir)
    finally:
        pidfile.release()


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
