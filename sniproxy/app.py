"""Process lifecycle: listeners, worker processes, signals, drain.

``workers: 1`` serves in this process. ``workers: N`` or ``auto`` forks N workers that each bind
every listener with SO_REUSEPORT (the kernel spreads connections) and run their own uvloop event
loop; the supervisor restarts a worker that dies and stops them all on SIGTERM/SIGINT.
SIGTERM drains: stop accepting, let connections finish for ``drain_seconds``, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
import time
from typing import Any

from sniproxy.config.model import HttpMode, Protocol
from sniproxy.connection import STATS, ClientConnection
from sniproxy.crl.manager import CrlManager
from sniproxy.http_connection import HttpsConnection
from sniproxy.observability.log import get_logger
from sniproxy.tls.contexts import Snapshot, SnapshotHolder

_log = get_logger("sniproxy.app")
DRAIN_SECONDS = 30.0


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def start_listeners(holder: SnapshotHolder, *, reuse_port: bool = False) -> list[asyncio.Server]:
    """Bind every listener address of the current snapshot; the servers accept at once."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for lr in holder.current.listeners.values():
            name = lr.listener.name
            http = lr.listener.http
            # https in mode http parses and rewrites requests; in mode tcp it is a plain TLS relay.
            cls = (HttpsConnection if lr.listener.protocol is Protocol.HTTPS and http is not None
                   and http.mode is HttpMode.HTTP else ClientConnection)
            for addr in lr.listener.binds:
                srv = await loop.create_server(
                    lambda n=name, c=cls: c(holder, n),  # type: ignore[misc]
                    addr.host, addr.port, reuse_port=reuse_port, backlog=1024,
                )
                servers.append(srv)
    except BaseException:
        for srv in servers:
            srv.close()
        raise
    return servers


async def serve(holder: SnapshotHolder, *, reuse_port: bool = False,
                drain_seconds: float = DRAIN_SECONDS) -> None:
    """Serve until SIGTERM/SIGINT, then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_stats)
    snapshot = holder.current
    crl: CrlManager | None = None
    crl_task: asyncio.Task[None] | None = None
    if snapshot.revocation is not None:
        crl = CrlManager(snapshot.config, snapshot.revocation)
        # The cache (and a first fetch of what it lacks) is in force before any listener accepts.
        await crl.start()
        crl_task = loop.create_task(crl.run())
    servers = await start_listeners(holder, reuse_port=reuse_port)
    addrs = [f"{s.sockets[0].getsockname()[0]}:{s.sockets[0].getsockname()[1]}" for s in servers if s.sockets]
    _log.info("ready", pid=os.getpid(), listening=addrs, crl_ready=crl.ready if crl is not None else True)
    await stop.wait()
    for srv in servers:
        srv.close()
    if crl_task is not None:
        crl_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await crl_task
    deadline = loop.time() + drain_seconds
    _log.info("draining", active=STATS.active, seconds=drain_seconds)
    # Polling a counter keeps the per-connection path free of any drain bookkeeping.
    while STATS.active > 0 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    _log.info("stopped", pid=os.getpid(), left=STATS.active)


def log_stats() -> None:
    """Log a ``stats`` event (SIGUSR1): connection counters, tasks and open file descriptors.

    What an operator (or a test) reads to see that a flood or a wave of resets left nothing behind.
    """
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    _log.info("stats", pid=os.getpid(), tasks=len(asyncio.all_tasks()), open_fds=fds, **STATS.report())


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


def run_worker(holder: SnapshotHolder, reuse_port: bool) -> int:
    """Run one event loop serving the snapshot; returns the process exit code."""
    _use_uvloop()
    try:
        asyncio.run(serve(holder, reuse_port=reuse_port))
    except OSError as exc:
        _log.error("listen_failed", error=str(exc))
        return 1
    return 0


def _check_binds(snapshot: Snapshot) -> None:
    """Bind and release every address once, so a busy port fails the supervisor, not N workers."""
    for lr in snapshot.listeners.values():
        for addr in lr.listener.binds:
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((addr.host, addr.port))


def run(snapshot: Snapshot, workers: int) -> int:
    """Serve with ``workers`` processes (1: in this process)."""
    holder = SnapshotHolder(snapshot)
    nofile = raise_fd_limit()
    limits = snapshot.config.limits
    if 2 * limits.max_connections + 64 > nofile:
        _log.warning("fd_limit_low", open_files_limit=nofile, max_connections=limits.max_connections,
                     hint="each connection holds two descriptors: raise the limit (ulimit -n) or lower "
                          "limits.max_connections")
    if workers <= 1:
        return run_worker(holder, reuse_port=False)
    try:
        _check_binds(snapshot)
    except OSError as exc:
        _log.error("listen_failed", error=str(exc))
        return 1
    return _supervise(holder, workers)


def _spawn(holder: SnapshotHolder) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = run_worker(holder, reuse_port=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid


def _supervise(holder: SnapshotHolder, workers: int) -> int:
    stopping = False
    children: dict[int, float] = {}

    def on_stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    for _ in range(workers):
        children[_spawn(holder)] = time.monotonic()
    _log.info("supervisor", pid=os.getpid(), workers=workers)
    quick_deaths = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
        started = children.pop(pid, time.monotonic())
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        quick_deaths = quick_deaths + 1 if time.monotonic() - started < 1.0 else 0
        _log.error("worker_died", pid=pid, exit=code)
        if quick_deaths >= 5:
            _log.error("giving_up", reason="workers die at start")
            on_stop(signal.SIGTERM, None)
            stopping = True
            continue
        children[_spawn(holder)] = time.monotonic()
    return 0
