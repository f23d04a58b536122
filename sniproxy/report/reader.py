"""Read ``connection`` events from JSON-lines logs: files, ``-`` (stdin), ``.gz``, many files merged by time.

Only lines whose ``event`` is ``connection`` are returned. A line that is not JSON, not an object, or has
no usable timestamp is counted in ``ReadStats.malformed`` and skipped: a log cut mid-line by a rotation
must never stop a report. Other events (``ready``, ``crl_updated``...) are skipped without parsing them:
a cheap substring test runs before the JSON parser (orjson: decision 0004), where the time goes on a million lines.
"""

from __future__ import annotations

import gzip
import heapq
import io
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

# structlog's JSONRenderer writes "event": "connection" with this exact spacing; the prefilter only has to
# let every connection line through (a false positive is parsed and then dropped by the real test).
_MARK = '"connection"'


@dataclass(slots=True)
class ReadStats:
    """What the reader saw: lines read, connection events kept, malformed lines skipped (with examples)."""

    lines: int = 0
    events: int = 0
    malformed: int = 0
    outside_window: int = 0
    examples: list[str] | None = None

    def bad(self, where: str) -> None:
        """Count one malformed line; keep the first few locations for the report's footer."""
        self.malformed += 1
        if self.examples is None:
            self.examples = []
        if len(self.examples) < 5:
            self.examples.append(where)


_DAYS: dict[str, float] = {}


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch from an ISO 8601 ``timestamp`` (naive = UTC); None if unusable."""
    if not isinstance(value, str):
        return None
    # Fast path for what structlog writes (``2026-12-06T18:40:05.123456Z``): each day is parsed once, the
    # time of day by slicing (a million events rarely share a minute, so caching minutes did not help).
    if len(value) >= 20 and value[-1] == "Z" and value[10] == "T" and value[13] == ":" and value[16] == ":":
        base = _DAYS.get(value[:10])
        if base is None:
            base = _slow_time(value[:10] + "T00:00:00Z")
            if base is not None and len(_DAYS) < 100_000:
                _DAYS[value[:10]] = base
        if base is not None:
            try:
                hours, minutes, seconds = int(value[11:13]), int(value[14:16]), float(value[17:-1])
            except ValueError:
                return None
            if 0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 61:
                return base + hours * 3600 + minutes * 60 + seconds
        return None
    return _slow_time(value)


def _slow_time(value: str) -> float | None:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _open(name: str) -> IO[str]:
    if name == "-":
        raw: IO[bytes] = sys.stdin.buffer
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
        if head == b"\x1f\x8b":
            raw = gzip.GzipFile(fileobj=raw)   # type: ignore[assignment]
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    path = Path(name)
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":   # by content, not by name: rotated logs are not always renamed .gz
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def events_from_lines(lines: Iterable[str], stats: ReadStats, source: str = "-",
                      since: float | None = None, until: float | None = None) -> Iterator[tuple[float, dict[str, Any]]]:
    """``(time, event)`` for every ``connection`` line of ``lines`` within ``[since, until)``, in file order."""
    loads = orjson.loads
    n = 0
    for n, line in enumerate(lines, 1):   # n, the lines read, is counted after the loop
        if _MARK not in line:
            if line.strip() and not line.lstrip().startswith("{"):
                stats.bad(f"{source}:{n}")   # not even a JSON object: a broken or foreign line
            continue
        try:
            ev = loads(line)   # orjson: strict JSON, text after the object refused (JSONDecodeError)
        except ValueError:
            stats.bad(f"{source}:{n}")
            continue
        if not isinstance(ev, dict):
            stats.bad(f"{source}:{n}")
            continue
        if ev.get("event") != "connection":
            continue
        ts = parse_time(ev.get("timestamp"))
        if ts is None:
            stats.bad(f"{source}:{n}")
            continue
        if (since is not None and ts < since) or (until is not None and ts >= until):
            stats.outside_window += 1
            continue
        stats.events += 1
        yield ts, ev
    stats.lines += n


def _one(name: str, stats: ReadStats, since: float | None,
         until: float | None) -> Iterator[tuple[float, dict[str, Any]]]:
    with _open(name) as fh:
        yield from events_from_lines(fh, stats, name, since, until)


def read_events(names: list[str], stats: ReadStats, since: float | None = None,
                until: float | None = None) -> Iterator[tuple[float, dict[str, Any]]]:
    """Events of every named log, merged by time (each file is in time order: one replica's log).

    ``heapq.merge`` holds one pending event per file, so memory does not grow with the logs' length.
    """
    streams = [_one(name, stats, since, until) for name in names]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda pair: pair[0])
