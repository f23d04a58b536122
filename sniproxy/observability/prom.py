"""Prometheus exposition of ``sniproxy.observability.metrics``, summed over the worker processes.

prometheus_client's multiprocess mode: ``install`` (once, in the supervisor before it forks, or in
the only process with ``workers: 1``) points every metric at a per-run directory where each
process keeps its values in its own memory-mapped file; ``scrape`` (the admin endpoint, in the
supervisor) reads them all and adds them up: counters summed over every process that ever ran in
this run, active-connection gauges over the live ones (``process_dead`` forgets a dead worker's).
Figures that only the supervisor knows (configuration generation, drain, certificate expiry, CRL
dates and age) are computed at scrape time by ``StateCollector``, never stored.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client import Counter as PCounter
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from sniproxy.card import read_certs
from sniproxy.errors import ConfigError
from sniproxy.lifecycle.pidfile import pid_alive
from sniproxy.observability.metrics import REGISTRY, Metric

ENV = "PROMETHEUS_MULTIPROC_DIR"
_installed: Path | None = None
_pid = [os.getpid()]


def _refresh_pid() -> None:
    _pid[0] = os.getpid()


# prometheus_client asks for the pid at every update, to notice a fork; getpid() is a system call
# (several microseconds under some sandboxes), so the pid is cached and refreshed in a forked child.
os.register_at_fork(after_in_child=_refresh_pid)


def _process_id() -> int:
    return _pid[0]


def _twin(m: Metric) -> Any:
    if m.kind == "counter":
        # prometheus_client adds the _total suffix itself
        return PCounter(m.name.removesuffix("_total"), m.help, m.labels, registry=None)
    if m.kind == "gauge":
        return PGauge(m.name, m.help, m.labels, registry=None, multiprocess_mode=m.mode)  # type: ignore[arg-type]
    return PHistogram(m.name, m.help, m.labels, registry=None, buckets=m.buckets)


def install(directory: Path) -> None:
    """Send every metric to files of ``directory`` from now on (this process and its forked children).

    The value class is switched here rather than by the environment at import time: by then the
    metrics module has long been imported. A forked worker notices its new pid at its first
    update and writes its own file.
    """
    global _installed
    if _installed is not None:
        if _installed == directory:
            return
        raise RuntimeError(f"metrics already installed in {_installed}")
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue(_process_id)  # type: ignore[no-untyped-call]
    for m in REGISTRY.values():
        m.sink = _twin(m)
        m.children.clear()
    _installed = directory


def installed() -> Path | None:
    """The metrics directory of this process, or None when the exposition is not installed."""
    return _installed


def process_dead(pid: int) -> None:
    """A worker exited: its live gauges (active connections) no longer count; its counters still do."""
    if _installed is not None:
        with contextlib.suppress(OSError):
            mark_process_dead(pid, str(_installed))  # type: ignore[no-untyped-call]


class _Collector(MultiProcessCollector):
    """prometheus_client's collector, less the files that hold no value yet.

    A worker opens its file before it gives it a size: a scrape in that instant reads 0 bytes, and
    prometheus_client's reader fails on them (the admin endpoint answered 500 just after workers
    were restarted). A file never shrinks once sized, so one of 8 bytes or more stays readable.
    """

    def collect(self) -> Any:
        files = []
        for f in glob.glob(os.path.join(self._path, "*.db")):
            with contextlib.suppress(FileNotFoundError):   # a dead worker's live gauge, being forgotten
                if os.stat(f).st_size >= 8:
                    files.append(f)
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


def scrape(directory: Path, extra: Iterable[Collector] = ()) -> bytes:
    """The Prometheus text of every process's files plus ``extra`` collectors. Blocking: run in a thread."""
    registry = CollectorRegistry()
    _Collector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    for c in extra:
        registry.register(c)
    return generate_latest(registry)


# -- per-run directory -------------------------------------------------------------------------------
def make_run_dir(state_dir: Path | None) -> Path:
    """A fresh directory for this run's metrics and live dumps: ``<state_dir>/run/<pid>`` or a temp dir.

    Directories left by runs that are over (their pid is gone, or is ours again as PID 1 in a
    restarted container) are removed first: counters must start from zero with the process.
    """
    if state_dir is None:
        return Path(tempfile.mkdtemp(prefix="sniproxy-run-"))
    base = state_dir / "run"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        if old.name.isdigit() and (int(old.name) == os.getpid() or not pid_alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    run = base / str(os.getpid())
    run.mkdir()
    return run


def remove_run_dir(path: Path) -> None:
    """Remove a run directory at exit."""
    shutil.rmtree(path, ignore_errors=True)


# -- figures computed at scrape time ------------------------------------------------------------------
class _Source(Protocol):
    """What the collector reads of a CRL source's status (``sniproxy.crl.manager.SourceStatus``)."""

    url: str
    authorities: tuple[str, ...]
    meta: Any


@dataclass(slots=True, eq=False)   # eq=False keeps it hashable: registries key collectors by identity
class StateCollector:
    """Configuration, drain, certificate and CRL figures, read from the supervisor's state at each scrape."""

    generation: Callable[[], int | None] = lambda: None
    draining: Callable[[], bool | None] = lambda: None
    ready: Callable[[], bool | None] = lambda: None
    certificates: Callable[[], dict[str, Path]] = dict        # flow -> certificate file
    crl_sources: Callable[[], Iterable[_Source]] = tuple
    cutovers: Callable[[], Iterable[tuple[str, str, bool]]] = tuple   # (target, instant as written, applied)
    clock: Callable[[], float] = time.time
    _not_after: dict[tuple[Path, int, int], float | None] = field(default_factory=dict)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The families (prometheus_client's collector interface)."""
        for name, help_, value in (
                ("sniproxy_config_generation", "Generation of the configuration in force (1 at start, "
                                               "+1 per successful reload)", self.generation()),
                ("sniproxy_draining", "1 while the process drains (SIGTERM or POST /drain)", self.draining()),
                ("sniproxy_ready", "1 when /readyz answers 200", self.ready())):
            if value is not None:
                yield GaugeMetricFamily(name, help_, value=float(value))
        certs = GaugeMetricFamily("sniproxy_server_certificate_not_after_seconds",
                                  "notAfter of each flow's server certificate, Unix time", labels=["flow"])
        for flow, path in sorted(self.certificates().items()):
            when = self._cert_not_after(path)
            if when is not None:
                certs.add_metric([flow], when)
        yield certs
        cut = GaugeMetricFamily("sniproxy_cutover_applied",
                                "Each scheduled cutover entry: 1 once in force, 0 while scheduled; target is "
                                "flow/NAME (certificate switch) or listener/NAME (default flow switch)",
                                labels=["target", "at"])
        for target, at, applied in self.cutovers():
            cut.add_metric([target, at], 1.0 if applied else 0.0)
        yield cut
        yield from self._crl()

    def _crl(self) -> Iterator[GaugeMetricFamily]:
        labels = ["authority", "source"]
        this = GaugeMetricFamily("sniproxy_crl_this_update_seconds",
                                 "thisUpdate of the CRL in force from each source, Unix time", labels=labels)
        nxt = GaugeMetricFamily("sniproxy_crl_next_update_seconds",
                                "nextUpdate of the CRL in force from each source, Unix time", labels=labels)
        age = GaugeMetricFamily("sniproxy_crl_age_seconds",
                                "Seconds since the thisUpdate of the CRL in force from each source", labels=labels)
        now = self.clock()
        for st in self.crl_sources():
            if st.meta is None:
                continue
            for authority in st.authorities:
                this.add_metric([authority, st.url], st.meta.this_update)
                nxt.add_metric([authority, st.url], st.meta.next_update)
                age.add_metric([authority, st.url], max(0.0, now - st.meta.this_update))
        yield this
        yield nxt
        yield age

    def _cert_not_after(self, path: Path) -> float | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in self._not_after:
            try:
                cert = read_certs(path)[0]
                self._not_after[key] = cert.not_valid_after_utc.timestamp()
            except ConfigError:   # unreadable now: the gauge says nothing rather than something stale
                self._not_after[key] = None
        return self._not_after[key]
