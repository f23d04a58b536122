"""Keeps the CRLs of every authority set in force: cache at start, scheduled refresh, atomic swaps.

Owns, per CRL source: its fetch schedule (``next_delay``: from nextUpdate and ``refresh_max``, with
jitter and exponential backoff), the last fetch result, the install of a new CRL into the
``RevocationHolder`` (base or delta, never older than the one in force) and the disk cache; and
the readiness of the process (every required issuing CA has a CRL still current, or within grace).
Decoding, signature check and indexing run off the event loop (``sniproxy.crl.prepare``): in a
thread for small CRLs, in a separate process for large ones (a million entries take seconds of pure
Python), so handshakes in progress never wait for a refresh; this module chooses which, and when.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.card import read_certs
from sniproxy.config.model import Config, CrlSettings
from sniproxy.crl import sources
from sniproxy.crl.cache import CrlCache
from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.prepare import Prepared, background_priority, map_files, prepare, prepare_file, temp_file
from sniproxy.crl.published import publish, published_dir
from sniproxy.crl.state import IssuerState, LoadedCrl, RevocationHolder
from sniproxy.crl.validate import CrlMeta, ca_key, check_delta_base, check_not_older
from sniproxy.observability.log import get_logger
from sniproxy.observability.metrics import CRL_FETCH_FAILURES, CRL_FETCHES

_log = get_logger("sniproxy.crl")
#: CRLs up to this size are decoded in a thread (milliseconds of work); larger ones in a process.
#: The same size as the fetch spool's: what is spooled to a file is what the helper reads from one.
THREAD_LIMIT = sources.SPOOL_OVER
#: A replaced CRL is released this long after the swap, in a worker thread (see ``_retire``).
RETIRE_AFTER = 5.0
#: Temporary files older than this in the cache directory are leftovers of a crash.
STALE_TEMP_SECONDS = 3600.0
_OK_RESULTS = frozenset({"updated", "unchanged", "not_modified", "cached"})


async def _drop_later(box: list[object]) -> None:
    await asyncio.sleep(RETIRE_AFTER)
    await asyncio.to_thread(box.clear)


def next_delay(now: float, fresh_until: float | None, failures: int, settings: CrlSettings,
               rand: Callable[[], float] = random.random) -> float:
    """Seconds until the next fetch of a source.

    Success: ``refresh_max``, or sooner when nextUpdate comes first. Failure (or a CRL that is
    already past its nextUpdate): ``retry_min`` doubling per failure, capped at ``refresh_max``.
    Jitter of +-10 % keeps replicas from fetching in step.
    """
    if failures > 0 or (fresh_until is not None and fresh_until <= now):
        base = min(settings.refresh_max, settings.retry_min * (2 ** min(max(0, failures - 1), 30)))
    else:
        base = settings.refresh_max
        if fresh_until is not None:
            base = min(base, fresh_until - now)
    return float(max(1.0, base * (0.9 + 0.2 * rand())))


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One CRL source and the CAs that may have signed what it serves."""

    url: str
    authorities: tuple[str, ...]
    cas: tuple[x509.Certificate, ...]


@dataclass(slots=True)
class SourceStatus:
    """What is known of one source: the CRL it gave that is in force, and the last fetch."""

    url: str
    authorities: tuple[str, ...]
    meta: CrlMeta | None = None
    etag: str | None = None
    last_modified: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    last_result: str | None = None
    last_error: str | None = None
    failures: int = 0
    next_attempt: float | None = None


@dataclass(frozen=True, slots=True)
class Need:
    """An issuing CA of a set that must have a current CRL."""

    authority: str
    key: bytes
    subject: str
    grace: float | None


@dataclass(slots=True)
class _Readiness:
    ready: bool | None = None
    problems: list[str] = field(default_factory=list)


class CrlManager:
    """Loads, refreshes and reports the CRLs of one config into a ``RevocationHolder``."""

    #: In the ``crl_updated`` event: ``fetcher`` (downloads), or ``follower`` (a worker mapping what it published).
    role = "fetcher"

    def __init__(self, config: Config, holder: RevocationHolder, *,
                 clock: Callable[[], float] = time.time, publish: bool = False) -> None:
        self.settings = config.crl
        # The pod's fetcher publishes every CRL it puts in force for the workers' followers (handover).
        self.publish = publish and config.crl.cache_dir is not None
        self._to_publish: list[tuple[str, Prepared]] = []
        self.holder = holder
        self.clock = clock
        self.cache = CrlCache(config.crl.cache_dir) if config.crl.cache_dir is not None else None
        self.specs: dict[str, SourceSpec] = {}
        self.needs: list[Need] = []
        self._executor: Executor | None = None
        self._helper_users = 0
        self._retiring: set[asyncio.Task[None]] = set()
        self._tmpdir: Path | None = None
        # A delta that arrived before its base (sources are fetched concurrently): applied with the base.
        self._pending_deltas: dict[bytes, tuple[str, Prepared]] = {}
        self._readiness = _Readiness()
        by_url: dict[str, tuple[list[str], list[x509.Certificate]]] = {}
        for name, aset in config.authorities.items():
            if not aset.enabled or not aset.revocation_required:
                continue
            roots = [c for p in aset.roots for c in read_certs(p)]
            inters = [c for p in aset.intermediates for c in read_certs(p)]
            for url in aset.crl_sources:
                names, cas = by_url.setdefault(url, ([], []))
                names.append(name)
                cas.extend(c for c in (*inters, *roots) if c not in cas)
            issuing = [*inters, *roots] if aset.crl_check == "chain" else (inters or roots)
            self.needs += [Need(name, ca_key(c), c.subject.rfc4514_string(), aset.crl_grace) for c in issuing]
        for url, (names, cas) in by_url.items():
            self.specs[url] = SourceSpec(url, tuple(names), tuple(cas))
        self.status = {url: SourceStatus(url, spec.authorities) for url, spec in self.specs.items()}

    # ------------------------------------------------------------------ off-loop work
    def _workdir(self) -> Path:
        """Where large CRLs and their indexes are written: the cache directory, else a private one."""
        if self.cache is not None:
            self.cache.directory.mkdir(parents=True, exist_ok=True)
            return self.cache.directory
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="sniproxy-crl-"))
        return self._tmpdir

    async def _prepare(self, spec: SourceSpec, data: bytes | None = None, path: Path | None = None,
                       *, owned: bool = False) -> Prepared:
        """Validate and index a CRL given as bytes or as a file, off the event loop.

        Large CRLs go to the helper process as a file path and come back as files that are
        mapped, never as bytes through a pipe: pickling 50 MB in and 12 MB out stalled the loop.
        ``owned``: ``path`` is a temporary file of ours (a spooled fetch), removed or kept as the
        cache copy; otherwise it is the cache file itself.
        """
        cas_der = tuple(c.public_bytes(Encoding.DER) for c in spec.cas)
        now = self.clock()
        if data is None:
            assert path is not None
            size = (await asyncio.to_thread(path.stat)).st_size
            if size <= THREAD_LIMIT:
                data = await asyncio.to_thread(path.read_bytes)
                if owned:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
        if data is not None and len(data) <= THREAD_LIMIT:
            return await asyncio.to_thread(prepare, data, cas_der, now)
        workdir = self._workdir()
        given = None if owned else path
        if data is not None:
            path = await asyncio.to_thread(temp_file, workdir, "incoming", data)
        assert path is not None
        self._helper_users += 1
        try:
            files = await asyncio.get_running_loop().run_in_executor(
                self._helper(), prepare_file, str(path), cas_der, now, str(workdir))
        except BaseException:
            if path != given:
                path.unlink(missing_ok=True)
            raise
        finally:
            self._helper_users -= 1
            if self._helper_users == 0:
                self._stop_helper()
        index, der_file = await asyncio.to_thread(map_files, files, path, given, self.cache is not None)
        return Prepared(files.meta, index, der_file)

    def _retire(self, obj: object) -> None:
        """Release ``obj`` (a replaced view, a prepared CRL) later, in a worker thread.

        A large CRL is mapped from files whose names are already gone: the last unmap frees tens
        of MB of page cache, about 13 ms for a million entries. On the event loop thread that
        would stall every handshake in progress at the swap; in a worker it does not (the unmap
        runs without the GIL). Whoever holds the last reference frees it, so the drop waits a
        little for the swapping code's own references to go.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(_drop_later([obj]))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _helper(self) -> Executor:
        if self._executor is None:
            import multiprocessing

            # spawn, not fork: this process runs an event loop and threads. The helper lives while
            # CRLs are being prepared and stops after (_stop_helper): its memory (a hundred MB for a
            # million entries) goes with it, and it is not respawned at the moment a CRL is installed.
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=background_priority)
        return self._executor

    def _stop_helper(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        """Stop the helper process, if any."""
        self._stop_helper()
        for task in list(self._retiring):
            task.cancel()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # ------------------------------------------------------------------ install
    def _install(self, url: str, prepared: Prepared) -> str:
        """Put a prepared CRL in force (or refuse it); returns ``updated`` or ``unchanged``."""
        meta = prepared.meta
        view = self.holder.current
        state = view.issuers.get(meta.issuer_key)
        loaded = LoadedCrl(meta, prepared.index, url)
        if meta.is_delta:
            if state is None:
                self._pending_deltas[meta.issuer_key] = (url, prepared)
            check_delta_base(meta, state.base.meta if state else None)
            assert state is not None
            if state.delta is not None:
                if state.delta.meta.sha256 == meta.sha256:
                    return "unchanged"
                check_not_older(meta, state.delta.meta)
            new = IssuerState(state.base, loaded)
        else:
            delta = None
            if state is not None:
                if state.base.meta.sha256 == meta.sha256:
                    return "unchanged"
                check_not_older(meta, state.base.meta)
                old = state.delta
                # A delta stays in force while it is newer than the new base and built on what it has.
                if (old is not None and old.meta.number is not None and meta.number is not None
                        and old.meta.base_number is not None
                        and old.meta.base_number <= meta.number < old.meta.number):
                    delta = old
            new = IssuerState(loaded, delta)
        self.holder.swap(view.with_issuer(meta.issuer_key, new))
        self._retire(view)
        _log.info("crl_updated", role=self.role, url=url, issuer=meta.issuer, crl_number=meta.number,
                  delta_of=meta.base_number, entries=meta.entries,
                  this_update=_iso(meta.this_update), next_update=_iso(meta.next_update))
        if self.publish:
            self._to_publish.append((url, prepared))
        pending = None if meta.is_delta else self._pending_deltas.pop(meta.issuer_key, None)
        if pending is not None:
            delta_url, waiting = pending
            try:
                self.status[delta_url].last_result = self._install(delta_url, waiting)
                self.status[delta_url].meta = waiting.meta
                self.status[delta_url].last_error = None
            except CrlRejected as exc:
                _log.warning("crl_rejected", url=delta_url, reason=exc.reason, error=exc.message)
        return "updated"

    async def _publish_pending(self) -> None:
        """Hand what was just put in force over to the workers (``sniproxy.crl.handover``)."""
        if not self._to_publish or self.cache is None:
            return
        batch, self._to_publish = self._to_publish, []
        directory = published_dir(self.cache.directory)
        for url, prepared in batch:
            try:
                await asyncio.to_thread(publish, directory, url, prepared.meta, prepared.index)
            except OSError as exc:
                # The workers keep the CRL they have; the next refresh publishes again.
                _log.error("crl_publish_failed", url=url, error=str(exc))

    # ------------------------------------------------------------------ cache
    async def load_cache(self) -> None:
        """Put every cached CRL in force (bases before deltas). Call before listeners accept."""
        if self.cache is None:
            return
        cache = self.cache
        await asyncio.to_thread(cache.remove_stale_temps, STALE_TEMP_SECONDS)
        prepared: list[tuple[str, Prepared]] = []
        for url, spec in self.specs.items():
            path = cache.crl_path(url)
            saved = await asyncio.to_thread(cache.read_status, url)
            st = self.status[url]
            st.last_attempt = saved.get("last_attempt")
            st.last_success = saved.get("last_success")
            st.last_result = saved.get("last_result")
            st.last_error = saved.get("last_error")
            if not await asyncio.to_thread(path.is_file):
                continue
            try:
                prepared.append((url, await self._prepare(spec, path=path)))
                st.etag, st.last_modified = saved.get("etag"), saved.get("last_modified")
            except Exception as exc:  # a corrupt cache file must never stop the start: it is refetched
                reason = exc.reason if isinstance(exc, CrlRejected) else "parse_error"
                _log.warning("crl_cache_rejected", url=url, reason=reason, error=str(exc))
        prepared.sort(key=lambda p: p[1].meta.is_delta)
        for url, p in prepared:
            try:
                self._install(url, p)
                self.status[url].meta = p.meta
            except CrlRejected as exc:
                _log.warning("crl_cache_rejected", url=url, reason=exc.reason, error=exc.message)
        await self._publish_pending()
        self.check_readiness()

    # ------------------------------------------------------------------ fetch
    async def refresh(self, url: str) -> str:
        """Fetch, validate and install one source now; returns the result (never raises for the source's faults)."""
        spec, st = self.specs[url], self.status[url]
        st.last_attempt = self.clock()
        der: bytes | None = None
        der_file: Path | None = None
        try:
            fetched = await sources.fetch(url, sources.Conditional(st.etag, st.last_modified),
                                          timeout=self.settings.timeout, max_bytes=self.settings.max_bytes,
                                          spool=self._workdir())
            if fetched.not_modified:
                result = "not_modified"
            else:
                prepared = await self._prepare(spec, fetched.data, fetched.path, owned=True)
                self._retire(prepared)
                der_file = prepared.der_file
                result = self._install(url, prepared)
                st.meta = prepared.meta
                if der_file is None and isinstance(prepared.index.der, bytes):
                    der = prepared.index.der
                st.etag, st.last_modified = fetched.etag, fetched.last_modified
            st.failures, st.last_success, st.last_error = 0, self.clock(), None
        except CrlRejected as exc:
            st.failures += 1
            result, st.last_error = exc.reason, exc.message
            _log.warning("crl_rejected", url=url, reason=exc.reason, error=exc.message, failures=st.failures)
        except Exception as exc:  # a library's surprise on odd input must not end the refresh loop
            if isinstance(exc, BrokenExecutor):
                self._stop_helper()  # the helper process died (e.g. killed for memory): a new one next time
            st.failures += 1
            result, st.last_error = "fetch_error", f"{type(exc).__name__}: {exc}"
            _log.warning("crl_rejected", url=url, reason=result, error=st.last_error, failures=st.failures)
        st.last_result = result
        for name in spec.authorities:
            CRL_FETCHES.inc(name, result)
            if result not in _OK_RESULTS:
                CRL_FETCH_FAILURES.inc(name, url, result)
        try:
            await self._save(url, der, der_file if result in ("updated", "unchanged") else None)
        finally:
            if der_file is not None:
                der_file.unlink(missing_ok=True)   # refused, or not adopted by the cache
        await self._publish_pending()
        self.check_readiness()
        return result

    async def _save(self, url: str, der: bytes | None, der_file: Path | None = None) -> None:
        """Store the status of ``url`` and its new CRL (bytes, or a DER temp file moved into place)."""
        if self.cache is None:
            return
        st = self.status[url]
        status = {"etag": st.etag, "last_modified": st.last_modified, "last_attempt": st.last_attempt,
                  "last_success": st.last_success, "last_result": st.last_result, "last_error": st.last_error}
        try:
            if der_file is not None:
                await asyncio.to_thread(self.cache.adopt_crl, url, der_file)
            elif der is not None:
                await asyncio.to_thread(self.cache.write_crl, url, der)
            await asyncio.to_thread(self.cache.write_status, url, status)
        except OSError as exc:
            # The CRL stays in force in memory; only the copy for the next start is missing.
            _log.error("crl_cache_write_failed", url=url, error=str(exc))

    async def refresh_all(self) -> dict[str, str]:
        """Fetch every source concurrently; returns url -> result."""
        urls = list(self.specs)
        results = await asyncio.gather(*(self.refresh(u) for u in urls))
        return dict(zip(urls, results, strict=True))

    async def start(self) -> None:
        """Load the cache, then fetch at once the sources it had nothing for (bounded by the fetch timeout)."""
        await self.load_cache()
        missing = [u for u, st in self.status.items() if st.meta is None]
        if missing:
            await asyncio.gather(*(self.refresh(u) for u in missing))

    async def run(self) -> None:
        """Refresh every source on its schedule, forever (cancel to stop)."""
        if not self.specs:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                for url in self.specs:
                    tg.create_task(self._loop(url))
                tg.create_task(self._watch())
        finally:
            self.close()

    def _fresh_until(self, st: SourceStatus) -> float | None:
        if st.meta is None:
            return None
        state = self.holder.current.issuers.get(st.meta.issuer_key)
        return state.fresh_until if state is not None else None

    async def _loop(self, url: str) -> None:
        st = self.status[url]
        while True:
            now = self.clock()
            delay = next_delay(now, self._fresh_until(st), st.failures, self.settings)
            st.next_attempt = now + delay
            await asyncio.sleep(delay)
            await self.refresh(url)

    async def _watch(self) -> None:
        # CRLs go stale by the clock alone, with no fetch to notice it: look every few seconds.
        period = max(1.0, min(30.0, self.settings.retry_min))
        while True:
            await asyncio.sleep(period)
            self.check_readiness()

    # ------------------------------------------------------------------ readiness and status
    def problems(self, now: float | None = None) -> list[str]:
        """Why the process is not ready: issuing CAs without a current CRL (empty when ready)."""
        now = self.clock() if now is None else now
        out: list[str] = []
        view = self.holder.current
        for need in self.needs:
            state = view.issuers.get(need.key)
            if state is None:
                out.append(f"{need.authority}: no CRL for {need.subject}")
            elif now > state.fresh_until + (need.grace or 0.0):
                out.append(f"{need.authority}: CRL of {need.subject} stale since {_iso(state.fresh_until)}")
        return out

    def check_readiness(self) -> bool:
        """Recompute readiness; log a ``crl_ready``/``crl_not_ready`` event when it changes."""
        now = self.clock()
        problems = self.problems(now)
        ready = not problems
        grace = [f"{n.authority}: {n.subject}" for n in self.needs
                 if (s := self.holder.current.issuers.get(n.key)) is not None and n.grace is not None
                 and s.fresh_until < now <= s.fresh_until + n.grace]
        r = self._readiness
        if ready != r.ready or problems != r.problems:
            if ready:
                _log.info("crl_ready", issuers=len(self.needs), in_grace=grace)
            else:
                _log.warning("crl_not_ready", problems=problems)
            r.ready, r.problems = ready, problems
        return ready

    @property
    def ready(self) -> bool:
        """True when every required issuing CA has a CRL that is current (or within its grace)."""
        return not self.problems()

    def report(self) -> list[dict[str, Any]]:
        """Per source: what ``sniproxy crl status`` prints."""
        now = self.clock()
        rows: list[dict[str, Any]] = []
        for url, st in self.status.items():
            row: dict[str, Any] = {"url": url, "authorities": list(st.authorities), "kind": sources.kind(url)}
            if st.meta is not None:
                m = st.meta
                row.update(issuer=m.issuer, crl_number=m.number, delta_of=m.base_number, entries=m.entries,
                           this_update=_iso(m.this_update), next_update=_iso(m.next_update),
                           age_s=round(now - m.this_update), stale=now > m.next_update)
            row.update(last_result=st.last_result, last_error=st.last_error,
                       last_attempt=_iso(st.last_attempt) if st.last_attempt else None)
            rows.append(row)
        return rows


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
