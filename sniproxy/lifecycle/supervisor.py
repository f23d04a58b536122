"""The supervisor: worker processes, signals (also as PID 1), reload, scheduled cutovers, drain.

Every ``workers`` value forks: the supervisor never serves, it runs an asyncio loop that owns the
signals, watches its children and talks to each over a control channel (JSON lines on a
socketpair; docs/decisions/0005-process-model.md). Workers bind every listener with SO_REUSEPORT.

- SIGHUP (or ``sniproxy reload``, or ``Control.reload``): re-read the file, validate it exactly as
  ``sniproxy check`` does (off the loop), then every worker compiles the same text and swaps;
  connections keep the snapshot they started with. A refused config changes nothing.
- A ``cutover`` entry's instant: a new generation in every worker, no reload needed.
- SIGTERM/SIGINT: drain (stop accepting, let connections end up to ``drain.timeout``, then
  protocol goodbyes), exit 0. A second one forces the goodbyes at once.
Implements ``sniproxy.control.Control`` for the admin endpoint.

Owns: the supervisor's loop and the workers it runs. Must not: serve connections itself (it imports
no connection driver) or prepare the process (fd limit, PID file, event loop policy: ``sniproxy.app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sniproxy.config.load import load, read_text
from sniproxy.config.model import Address
from sniproxy.control import ReloadResult
from sniproxy.crl.manager import CrlManager
from sniproxy.crl.state import RevocationHolder
from sniproxy.errors import ConfigError, ConfigErrors
from sniproxy.lifecycle import memory, pid1
from sniproxy.lifecycle.build import Built, addresses, bind_error, build, compile_at, error_lines, pack
from sniproxy.lifecycle.channel import Channel
from sniproxy.lifecycle.pidfile import PidFile
from sniproxy.lifecycle.watch import fingerprint, watched_files
from sniproxy.observability import prom
from sniproxy.observability.log import get_logger
from sniproxy.observability.metrics import RELOADS
from sniproxy.runtime.snapshot import Snapshot

_log = get_logger("sniproxy.app")   # the logger name it had before the split: log queries match it
WORKER_ANSWER = 120.0      # longest wait for a worker to compile and bind (CRL first fetch included)
CUTOVER_RETRY = 30.0       # a cutover whose files became unusable is tried again this often
KILL_GRACE = 10.0          # after the drain time, workers still alive are killed
# Settings a running process cannot change: a reload warns, a restart applies them.
RESTART_ONLY = ("workers", "state_dir", "log_level", "log_format", "admin")


def probe_binds(built: Built, only: set[Address] | None = None) -> list[str]:
    """Bind (without SO_REUSEPORT) and release each address: a port another process listens on fails
    here, even when that process set SO_REUSEPORT (a second instance would otherwise share it)."""
    errors = []
    for addr in addresses(built.snapshot.config):
        if only is not None and addr not in only:
            continue
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT is no conflict
                s.bind((addr.host, addr.port))
        except OSError as exc:
            errors.append(bind_error(built.snapshot.config, addr, exc))
    return errors


@dataclass(eq=False)
class WorkerHandle:
    """One worker process as the supervisor sees it."""

    proc: asyncio.subprocess.Process
    channel: Channel
    started: float
    generation: int = 0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid


class Supervisor:
    """Runs the workers; implements ``sniproxy.control.Control``."""

    def __init__(self, source: Path, text: str, built: Built, workers: int,
                 pidfile: PidFile | None = None, run_dir: Path | None = None) -> None:
        self.source = source
        self._run_dir = run_dir      # metrics files and live dumps of this run (admin endpoint only)
        self._text = text
        self._built = built
        self._as_of = time.time()
        self._generation = built.snapshot.generation
        self._nworkers = workers
        self._pidfile = pidfile
        self._workers: list[WorkerHandle] = []
        self._draining = False
        self._forced = False
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._quick_deaths = 0
        self._cutover_timer: asyncio.TimerHandle | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.revocation = RevocationHolder()   # the supervisor's view (the admin endpoint's CRL readiness)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._admin: Any = None
        # The pod's one CRL fetcher: it publishes, the workers' followers map (sniproxy.crl.handover).
        self.crl: CrlManager | None = None
        self._crl_task: asyncio.Task[None] | None = None
        self._crl_key: tuple[Any, ...] | None = None

    # ------------------------------------------------------------------ Control
    @property
    def generation(self) -> int:
        """The config generation every worker serves."""
        return self._generation

    @property
    def draining(self) -> bool:
        """True from the first instant of a drain."""
        return self._draining

    @property
    def snapshot(self) -> Snapshot:
        """The current compiled config."""
        return self._built.snapshot

    def workers_ready(self) -> bool:
        """Every worker is up on the current generation with its listeners bound."""
        return (not self._draining and len(self._workers) == self._nworkers
                and all(w.generation == self._generation for w in self._workers))

    async def reload(self) -> ReloadResult:
        """Re-read, validate and install the config file in every worker; refused configs change nothing."""
        async with self._lock:
            if self._draining:
                return self._refused(("draining: no reload while shutting down",))
            loop = asyncio.get_running_loop()
            gen = self._generation + 1
            as_of = time.time()
            try:
                text = await loop.run_in_executor(None, read_text, self.source)
                built = await loop.run_in_executor(None, build, self.source, text, gen, as_of, self.revocation)
            except (ConfigErrors, ConfigError) as exc:
                return self._refused(error_lines(exc))
            held = set(addresses(self.snapshot.config))
            probe = probe_binds(built, set(addresses(built.snapshot.config)) - held)
            if probe:
                return self._refused(tuple(probe))
            old_cfg, new_cfg = self.snapshot.config, built.snapshot.config
            # The fetcher first: the workers' followers find the new sources' CRLs already published.
            await self._update_crl(built.snapshot)
            for key in RESTART_ONLY:
                if getattr(old_cfg, key) != getattr(new_cfg, key):
                    _log.warning("reload_needs_restart", key=key, hint="takes effect at the next start")
            errors = await self._install_all(pack(built.config), gen, as_of)
            if errors:
                # Some workers may have swapped: put every one back on the config still in force.
                self._generation = gen
                await self._install_all(pack(self._built.config), gen + 1, self._as_of)
                self._generation = gen + 1
                return self._refused(tuple(errors))
            prev = self._built
            self._text, self._built, self._as_of, self._generation = text, built, as_of, gen
            self.reloads_ok += 1
            RELOADS.inc("ok")
            _log.info("reload", generation=gen, warnings=len(built.warnings),
                      listeners=sorted(ls.name for ls in new_cfg.listeners),
                      listeners_removed=sorted({ls.name for ls in old_cfg.listeners}
                                               - {ls.name for ls in new_cfg.listeners}))
            self._log_cutovers(prev, built, at_start=False)
            self._write_status(ReloadResult(True, gen))
            self._schedule_cutover()
            return ReloadResult(True, gen)

    def _refused(self, errors: tuple[str, ...]) -> ReloadResult:
        self.reloads_failed += 1
        RELOADS.inc("failed")
        result = ReloadResult(False, self._generation, errors)
        _log.error("reload_failed", generation=self._generation, errors=list(errors),
                   reloads_failed=self.reloads_failed)
        self._write_status(result)
        return result

    def drain(self) -> None:
        """Start the graceful drain (SIGTERM does the same)."""
        if self._draining:
            return
        self._draining = True
        timeout = self.snapshot.config.drain_timeout
        _log.info("draining", pid=os.getpid(), seconds=timeout, workers=[w.pid for w in self._workers])
        if self._cutover_timer is not None:
            self._cutover_timer.cancel()
        for w in self._workers:
            w.channel.send({"op": "drain", "timeout": timeout})
        loop = asyncio.get_running_loop()
        self._kill_timer = loop.call_later(timeout + KILL_GRACE, self._kill_all)
        if not self._workers:
            self._stop.set()

    def force(self) -> None:
        """A second stop signal: goodbyes now, exit."""
        if self._forced:
            return
        self._forced = True
        _log.warning("forced_stop", pid=os.getpid(), workers=[w.pid for w in self._workers])
        for w in self._workers:
            w.channel.send({"op": "force"})
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._kill_timer = asyncio.get_running_loop().call_later(3.0, self._kill_all)

    def _kill_all(self) -> None:
        for w in self._workers:
            _log.error("worker_killed", pid=w.pid, reason="did not exit in time")
            with contextlib.suppress(ProcessLookupError):
                w.proc.kill()
        self._exit_code = 1

    # ------------------------------------------------------------------ workers
    async def _spawn(self) -> WorkerHandle:
        parent, child = socket.socketpair()
        try:
            cfg = self.snapshot.config
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sniproxy.lifecycle.worker", str(child.fileno()), str(os.getpid()),
                cfg.log_level, cfg.log_format, pass_fds=(child.fileno(),))
        finally:
            child.close()
        handle = WorkerHandle(proc, await Channel.open(parent), time.monotonic())
        self._workers.append(handle)
        handle.watcher = asyncio.get_running_loop().create_task(self._watch(handle))
        return handle

    async def _start_worker(self) -> str | None:
        """Spawn one worker and give it the config in force; the error if it cannot serve it."""
        handle = await self._spawn()
        errors = await self._install(handle, pack(self._built.config), self._generation, self._as_of, first=True)
        return "; ".join(errors) if errors else None

    async def _install(self, w: WorkerHandle, config: str, gen: int, as_of: float, *,
                       first: bool = False) -> list[str]:
        try:
            reply = await w.channel.request({"op": "load", "config": config, "generation": gen, "as_of": as_of,
                                             "first": first}, WORKER_ANSWER)
        except (ConnectionError, TimeoutError) as exc:
            return [f"worker {w.pid}: no answer ({type(exc).__name__})"]
        if reply.get("ok"):
            w.generation = gen
            return []
        return [str(e) for e in reply.get("errors", [])] or [f"worker {w.pid}: refused"]

    async def _install_all(self, config: str, gen: int, as_of: float) -> list[str]:
        results = await asyncio.gather(*(self._install(w, config, gen, as_of) for w in list(self._workers)))
        # The same error from every worker is one error.
        return list(dict.fromkeys(e for errs in results for e in errs))

    async def _watch(self, w: WorkerHandle) -> None:
        """Deliver the worker's replies; when it exits, restart it unless we are stopping."""
        while await w.channel.read() is not None:
            pass
        code = await w.proc.wait()
        w.channel.close()
        prom.process_dead(w.pid)   # its open connections no longer count; its counters still do
        if w in self._workers:
            self._workers.remove(w)
        if self._draining or self._stop.is_set():
            _log.info("worker_exited", pid=w.pid, exit=code)
            if code != 0:
                self._exit_code = 1
            if not self._workers:
                self._stop.set()
            return
        self._quick_deaths = self._quick_deaths + 1 if time.monotonic() - w.started < 5.0 else 0
        _log.error("worker_died", pid=w.pid, exit=code)
        if self._quick_deaths >= 5:
            _log.error("giving_up", reason="workers die at start")
            self._exit_code = 1
            self.drain()
            return
        async with self._lock:   # not in the middle of a reload: the new worker gets the config in force
            if self._draining:
                return
            error = await self._start_worker()
        if error is not None:
            _log.error("worker_failed", error=error)

    # ------------------------------------------------------------------ cutovers
    def _schedule_cutover(self) -> None:
        if self._cutover_timer is not None:
            self._cutover_timer.cancel()
            self._cutover_timer = None
        at = self._built.next_cutover
        if at is None or self._draining:
            return
        loop = asyncio.get_running_loop()
        self._cutover_timer = loop.call_later(max(0.0, at - time.time()), self._fire_cutover, at)

    def _fire_cutover(self, at: float) -> None:
        # The coroutine is made only when the timer fires: a cancelled timer leaves none unawaited.
        self._spawn_task(self._cutover(at))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cutover(self, at: float) -> None:
        async with self._lock:
            if self._draining:
                return
            if time.time() < at:   # the timer fired early (clock adjustment): wait for the instant
                self._schedule_cutover()
                return
            loop = asyncio.get_running_loop()
            gen = self._generation + 1
            as_of = max(time.time(), at)
            try:
                built = await loop.run_in_executor(None, compile_at, self._built.config, self._built.warnings, gen,
                                                   as_of, self.revocation)
            except (ConfigErrors, ConfigError) as exc:
                # A file of the entry changed since the reload that validated it: the old config stays,
                # and the entry is tried again (the operator may put the file back) until a reload.
                _log.error("cutover_failed", generation=self._generation, errors=list(error_lines(exc)),
                           retry_in=CUTOVER_RETRY)
                self._cutover_timer = loop.call_later(CUTOVER_RETRY, self._fire_cutover, at)
                return
            errors = await self._install_all(pack(built.config), gen, as_of)
            if errors:
                _log.error("cutover_failed", generation=gen, errors=errors)
            prev = self._built
            self._built, self._as_of, self._generation = built, as_of, gen
            self._log_cutovers(prev, built, at_start=False)
            self._write_status(None)
            self._schedule_cutover()

    def _log_cutovers(self, prev: Built | None, built: Built, *, at_start: bool) -> None:
        before = set(prev.applied) if prev is not None else set()
        for c in built.applied:
            if c not in before:
                _log.info("cutover_applied", generation=built.snapshot.generation, at=c.at_text, change=c.describe(),
                          line=c.line, late=at_start)

    # ------------------------------------------------------------------ CRL fetcher, admin endpoint
    async def _update_crl(self, snapshot: Snapshot) -> None:
        """(Re)start the pod's CRL fetcher when the CRL settings or authority sets changed."""
        from sniproxy.lifecycle.worker import crl_key, needs_crl

        key = crl_key(snapshot)
        if key == self._crl_key:
            return
        self._crl_key = key
        await self._stop_crl()
        if needs_crl(snapshot):
            self.crl = CrlManager(snapshot.config, self.revocation, publish=True)
            # Cache, then a first fetch of what it lacks, published before any worker looks.
            await self.crl.start()
            self._crl_task = asyncio.get_running_loop().create_task(self.crl.run())

    async def _stop_crl(self) -> None:
        if self._crl_task is not None:
            self._crl_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._crl_task
            self._crl_task = None
        if self.crl is not None:
            self.crl.close()
            self.crl = None

    def crl_problems(self) -> list[str]:
        """Required CRLs that are missing or stale in the fetcher's state (empty when all are fresh)."""
        return self.crl.problems() if self.crl is not None else []

    async def _start_admin(self) -> str | None:
        """Serve the admin endpoint when configured; the bind error (named like a listener's) if it cannot."""
        from sniproxy import admin

        config = self.snapshot.config
        settings = config.admin
        if settings is None:
            return None
        app = admin.AdminApp(self, crl_problems=self.crl_problems,
                             live_dir=self._run_dir / "live" if self._run_dir is not None else None)
        metrics_dir = prom.installed()
        if metrics_dir is not None:
            collector = prom.StateCollector(
                generation=lambda: self.generation, draining=lambda: self.draining,
                ready=lambda: not admin.not_ready_reasons(app),
                certificates=lambda: {n: f.certificate for n, f in self.snapshot.config.flows.items()},
                crl_sources=lambda: list(self.crl.status.values()) if self.crl is not None else [],
                cutovers=self._cutover_states)
            app.scrape = lambda: prom.scrape(metrics_dir, [collector])
        try:
            self._admin = await admin.start(settings, app)
        except OSError as exc:
            return str(ConfigError(f"cannot listen on {settings.bind} (admin endpoint): {exc.strerror or exc}",
                                   file=str(config.source), line=settings.line, key="admin.bind"))
        return None

    def _cutover_states(self) -> list[tuple[str, str, bool]]:
        applied = set(self._built.applied)
        return [(f"flow/{c.flow}" if c.flow is not None else f"listener/{c.listener}", c.at_text, c in applied)
                for c in self.snapshot.config.cutover]

    # ------------------------------------------------------------------ PID 1 duties
    def reap_adopted(self) -> list[int]:
        """Reap exited children we did not start ourselves; their pids."""
        return pid1.reap_adopted({w.pid for w in self._workers})

    # ------------------------------------------------------------------ reload.watch
    async def _watch_files(self) -> None:
        """Reload when the watched files' content changes (``reload.watch``); each change is tried once."""
        loop = asyncio.get_running_loop()
        # What the config in force was built from: its text as read, the other files as they are now.
        seen: str | None = await loop.run_in_executor(None, self._fingerprint, True)
        reloads = self.reloads_ok + self.reloads_failed
        while not self._draining:
            interval = self.snapshot.config.reload_watch
            if interval is None:
                seen = None
                await asyncio.sleep(5.0)   # the setting may be turned on by a reload
                continue
            # The files of the config being edited: a new CA file it now names counts too.
            now = await loop.run_in_executor(None, self._fingerprint, False)
            done = self.reloads_ok + self.reloads_failed
            if done != reloads:           # a reload by other means already took these files
                seen, reloads = now, done
            if seen is not None and now != seen and not self._draining:
                _log.info("config_changed", source=str(self.source))
                await self.reload()
                reloads = self.reloads_ok + self.reloads_failed
            seen = now
            await asyncio.sleep(interval)

    def _fingerprint(self, in_force: bool) -> str:
        config = self._built.config        # as validated: the base certificates, not a cutover's
        paths = watched_files(config)
        if in_force:
            return fingerprint(paths, {config.source: self._text.encode()})
        try:
            paths += watched_files(load(self.source, check_files=False).config)
        except (ConfigErrors, ConfigError):
            pass   # the config file's own bytes are in the fingerprint already
        return fingerprint(list(dict.fromkeys(paths)))

    # ------------------------------------------------------------------ main
    def _write_status(self, last: ReloadResult | None) -> None:
        if self._pidfile is None:
            return
        status: dict[str, Any] = {"pid": os.getpid(), "generation": self._generation,
                                  "reloads_ok": self.reloads_ok, "reloads_failed": self.reloads_failed}
        if last is not None:
            status["last_reload"] = {"ok": last.ok, "generation": last.generation, "errors": list(last.errors)}
        with contextlib.suppress(OSError):
            self._pidfile.write_status(status)

    def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        # Installed explicitly: as PID 1 the kernel ignores every signal without a handler.
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop)
        loop.add_signal_handler(signal.SIGUSR1, self._forward, signal.SIGUSR1)

    def _on_stop(self) -> None:
        if self._draining:
            self.force()
        else:
            self.drain()

    def _forward(self, sig: int) -> None:
        for w in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, sig)

    async def run(self) -> int:
        """Start the workers, serve until drained; the process exit code."""
        self._signals()
        _log.info("supervisor", pid=os.getpid(), workers=self._nworkers, generation=self._generation)
        self._log_cutovers(None, self._built, at_start=True)
        # First, so probes answer (503 until the workers are up) and a busy admin port stops the start.
        admin_error = await self._start_admin()
        if admin_error is not None:
            _log.error("listen_failed", errors=[admin_error])
            return 1
        async with self._lock:   # a SIGHUP during the start waits for it
            await self._update_crl(self.snapshot)   # CRLs published before any worker looks
            errors = await asyncio.gather(*(self._start_worker() for _ in range(self._nworkers)))
        failed = [e for e in errors if e is not None]
        if failed:
            _log.error("listen_failed", errors=list(dict.fromkeys(failed)))
            self._draining = True
            for w in self._workers:
                w.channel.send({"op": "force"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 10)
            await self._stop_crl()
            if self._admin is not None:
                await self._admin.close()
            return 1
        if self._draining:   # SIGTERM during the start: workers spawned after it must hear it too
            for w in self._workers:
                w.channel.send({"op": "drain", "timeout": self.snapshot.config.drain_timeout})
        _log.info("serving", pid=os.getpid(), generation=self._generation, workers=[w.pid for w in self._workers])
        self._write_status(None)
        self._schedule_cutover()
        watcher = asyncio.get_running_loop().create_task(self._watch_files())
        # The fetcher downloads and indexes CRLs and compiles each reload in executor threads: what it
        # frees there goes back to the kernel as a worker's does (lifecycle/memory).
        trimmer = asyncio.get_running_loop().create_task(memory.trim_forever())
        if os.getpid() == 1:
            self._spawn_task(pid1.reap_forever(self.reap_adopted))
        await self._stop.wait()
        watcher.cancel()
        trimmer.cancel()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        await self._stop_crl()
        if self._admin is not None:
            await self._admin.close()
        _log.info("exited", pid=os.getpid(), code=self._exit_code)
        return self._exit_code
