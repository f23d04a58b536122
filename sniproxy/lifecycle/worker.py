"""One worker process: serves every listener of the config its supervisor sends it.

Started by the supervisor as ``python -m sniproxy.lifecycle.worker FD PPID`` (FD: its end of the
control channel). It binds with SO_REUSEPORT (the kernel spreads connections over workers), swaps
snapshots on ``load`` (connections keep the one they started with), drains on ``drain`` or SIGTERM,
and exits when its supervisor dies (PDEATHSIG, getppid, channel EOF).
Messages in: ``load`` {config, generation, as_of}, ``drain`` {timeout}, ``force``.
Replies: {reply_to, ok, generation, listening, errors, crl_ready}.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from sniproxy.compiled import http_build
from sniproxy.config.model import Address
from sniproxy.crl.handover import CrlFollower
from sniproxy.crl.state import RevocationHolder
from sniproxy.driver.front import ClientConnection
from sniproxy.driver.shared import LIVE, STATS, Drain
from sniproxy.errors import ConfigError, ConfigErrors
from sniproxy.lifecycle import memory
from sniproxy.lifecycle.build import Built, addresses, bind_error, compile_at, error_lines, unpack
from sniproxy.lifecycle.channel import Channel
from sniproxy.lifecycle.procdeath import die_with_parent
from sniproxy.observability.log import configure, get_logger
from sniproxy.runtime.snapshot import Snapshot, SnapshotHolder

_log = get_logger("sniproxy.worker")


def crl_key(snapshot: Snapshot) -> tuple[Any, ...]:
    """What the CRL manager was built from: a reload that changes it restarts the manager."""
    cfg = snapshot.config
    return (cfg.crl, tuple(sorted((n, a) for n, a in cfg.authorities.items())))


def needs_crl(snapshot: Snapshot) -> bool:
    """An enabled authority set checks revocation."""
    return snapshot.revocation is not None and any(a.enabled and a.revocation_required
                                                   for a in snapshot.config.authorities.values())


class Worker:
    """The serving state of one worker process."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.holder: SnapshotHolder | None = None
        self.servers: dict[Address, asyncio.Server] = {}
        self.by_addr: dict[Address, str] = {}
        self.revocation = RevocationHolder()      # outlives snapshots: a reload keeps the CRLs in force
        self.crl: CrlFollower | None = None
        self.crl_task: asyncio.Task[None] | None = None
        self.crl_key: tuple[Any, ...] | None = None
        self.drain_timeout = 25.0
        self.draining = False
        self.done = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ connections
    def _factory(self, addr: Address) -> Any:
        def make() -> ClientConnection:
            # by_addr and holder.current change together, in one synchronous step of the loop.
            assert self.holder is not None
            return ClientConnection(self.holder, self.by_addr[addr])
        return make

    # ------------------------------------------------------------------ load / reload
    async def load(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Compile the text off the loop, bind what is new, swap, close what is gone."""
        generation = int(msg["generation"])
        if self.draining:
            return {"ok": False, "generation": generation, "errors": ["draining"]}
        loop = asyncio.get_running_loop()
        try:
            built: Built = await loop.run_in_executor(
                None, compile_at, unpack(msg["config"]), (), generation, float(msg["as_of"]), self.revocation)
        except (ConfigErrors, ConfigError) as exc:
            return {"ok": False, "generation": generation, "errors": list(error_lines(exc))}
        snapshot = built.snapshot
        wanted = addresses(snapshot.config)
        new: dict[Address, asyncio.Server] = {}
        try:
            for addr in wanted:
                if addr not in self.servers:
                    new[addr] = await loop.create_server(self._factory(addr), addr.host, addr.port,
                                                         reuse_port=True, backlog=1024)
        except OSError as exc:
            for srv in new.values():
                srv.close()
            return {"ok": False, "generation": generation, "errors": [bind_error(snapshot.config, addr, exc)]}
        # The swap: one synchronous step, so no connection sees a half-installed config.
        self.by_addr = wanted
        if self.holder is None:
            self.holder = SnapshotHolder(snapshot)
        else:
            self.holder.swap(snapshot)
        self.servers.update(new)
        for addr in [a for a in self.servers if a not in wanted]:
            # Stop accepting there; its connections keep their pinned snapshot and end by themselves.
            self.servers.pop(addr).close()
        self.drain_timeout = snapshot.config.drain_timeout
        # What the compile allocated in the executor's arena and what the old snapshot held (once no
        # connection pins it) goes back to the kernel, not into RSS for good.
        memory.after_swap()
        _log.info("snapshot", pid=os.getpid(), generation=generation, cutovers_in_force=len(built.applied),
                  rss_kib=memory.rss_kib())
        await self._update_crl(snapshot)
        return {"ok": True, "generation": generation, "listening": self.listening(),
                "crl_ready": self.crl.ready if self.crl is not None else True}

    async def _update_crl(self, snapshot: Snapshot) -> None:
        key = crl_key(snapshot)
        if key == self.crl_key:
            return
        self.crl_key = key
        await self._stop_crl()
        if needs_crl(snapshot):
            # The supervisor fetches (one download per pod); this worker maps what it published,
            # before a first listener accepts. On a reload the old CRLs stay in force meanwhile.
            self.crl = CrlFollower(snapshot.config, self.revocation)
            await self.crl.start()
            self.crl_task = asyncio.get_running_loop().create_task(self.crl.run())

    async def _stop_crl(self) -> None:
        if self.crl_task is not None:
            self.crl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.crl_task
            self.crl_task = None
        if self.crl is not None:
            self.crl.close()
            self.crl = None

    def listening(self) -> list[str]:
        """``host:port`` of every bound socket."""
        out = []
        for srv in self.servers.values():
            for s in srv.sockets:
                host, port = s.getsockname()[:2]
                out.append(f"{host}:{port}")
        return out

    # ------------------------------------------------------------------ drain
    def drain(self, timeout: float | None = None) -> None:
        """Stop accepting at once; let connections end up to ``timeout``; then say goodbye to the rest."""
        if self.draining:
            return
        self.draining = True
        self._drain_task = asyncio.get_running_loop().create_task(
            self._drain(self.drain_timeout if timeout is None else timeout))

    async def _drain(self, seconds: float) -> None:
        for srv in self.servers.values():
            srv.close()
        await self._stop_crl()
        Drain.active = True
        _log.info("draining", pid=os.getpid(), active=STATS.active, seconds=seconds)
        for conn in list(LIVE):
            conn.drain_begin()
        deadline = time.monotonic() + seconds
        # Polling the live set keeps the per-connection path free of drain bookkeeping.
        while LIVE and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self.force()

    async def force(self) -> None:
        """Goodbye to every connection left, let the goodbyes leave, then stop."""
        Drain.active = True
        left = len(LIVE)
        for conn in list(LIVE):
            conn.goodbye()
        if left:
            await asyncio.sleep(0.2)   # transports flush what close() left in their buffers
        _log.info("stopped", pid=os.getpid(), cut=left)
        self.done.set()

    # ------------------------------------------------------------------ control
    async def serve_channel(self) -> None:
        """Obey the supervisor until it says stop, or goes away (then drain: never an orphan)."""
        while True:
            msg = await self.channel.read()
            if msg is None:
                _log.warning("supervisor_gone", pid=os.getpid())
                self.drain()
                return
            op = msg.get("op")
            if op == "load":
                reply = await self.load(msg)
                if reply["ok"] and msg.get("first"):
                    # Logged before the reply, so it precedes the supervisor's "serving".
                    _log.info("ready", pid=os.getpid(), generation=reply["generation"],
                              listening=reply["listening"], crl_ready=reply["crl_ready"], http_build=http_build())
                    if memory.trace_if_asked():
                        memory.heap_growth()   # the reference the stats events compare with
                self.channel.send({"reply_to": msg.get("id"), **reply})
            elif op == "drain":
                self.drain(msg.get("timeout"))
            elif op == "force":
                if self._drain_task is not None:
                    self._drain_task.cancel()
                await self.force()


def log_stats() -> None:
    """Log a ``stats`` event (SIGUSR1): connection counters, tasks, open descriptors and memory.

    ``py_blocks`` (the Python heap's live blocks) beside ``rss_kib`` tells objects kept from pages
    the allocator keeps.
    """
    try:
        fds: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = None
    growth = memory.heap_growth()
    _log.info("stats", pid=os.getpid(), tasks=len(asyncio.all_tasks()), open_fds=fds,
              py_blocks=sys.getallocatedblocks(), rss_kib=memory.rss_kib(),
              **({} if growth is None else {"heap_growth": growth}), **STATS.report())


async def _main(fd: int) -> int:
    loop = asyncio.get_running_loop()
    channel = await Channel.open(socket.socket(fileno=fd))
    worker = Worker(channel)
    # SIGTERM straight to a worker (kill of the process group, PDEATHSIG) drains it; a second one
    # forces. SIGINT and SIGHUP belong to the supervisor (a terminal's ^C reaches the whole group).
    terms = 0
    tasks: set[asyncio.Task[None]] = set()

    def on_term() -> None:
        nonlocal terms
        terms += 1
        if terms == 1:
            worker.drain()
        else:
            task = loop.create_task(worker.force())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGUSR1, log_stats)
    reader = loop.create_task(worker.serve_channel())
    trimmer = loop.create_task(memory.trim_forever())
    await worker.done.wait()
    trimmer.cancel()
    reader.cancel()
    channel.close()
    return 0


def _observability() -> None:
    """Metrics to the supervisor's per-run directory, and the live migration dumps, when it made them."""
    from sniproxy.observability import prom

    metrics_dir = os.environ.get(prom.ENV)
    if metrics_dir:
        prom.install(Path(metrics_dir))
    live_dir = os.environ.get("SNIPROXY_LIVE_DIR")
    if live_dir:
        from sniproxy.admin.routes import live_report

        live = live_report()
        if live is not None:
            live.install(Path(live_dir))


def main(argv: list[str]) -> int:
    """Entry point of a worker process: ``FD PPID LOG_LEVEL LOG_FORMAT``."""
    fd, ppid = int(argv[0]), int(argv[1])
    memory.fix_thresholds()   # before the first relay buffer: glibc decides where chunks go as they come
    configure(argv[2], argv[3])
    _observability()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not die_with_parent(ppid):
        return 1
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    return asyncio.run(_main(fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
