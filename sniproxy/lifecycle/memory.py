"""Give the kernel back the heap pages a worker freed (glibc keeps them until asked).

Owns: ``malloc_trim``, the periodic call of it, glibc's fixed malloc thresholds (``fix_thresholds``) and the
diagnosis aids (RSS, traced heap growth).
Must not: free anything itself.

Why: the soak (issue 17) showed each worker's RSS rising in steps of 1.5 to 2.5 MiB a few times an
hour, under load with faults and reloads, and not coming back. The reload path alone shows why: the
Python heap stays flat while freed chunks sit in glibc's arenas, in the middle of the heap, where
its automatic trim (the top of the heap only) does not reach. ``bench/reload_rss.py`` (60 reloads: compile in
the executor, swap, drop) shows it: over the last 45, RSS grew 652 and 1092 KiB in two runs with
glibc as is, 32 and 28 KiB with ``after_swap`` (a full collection, then ``malloc_trim(0)``), the
traced Python heap 1 and 0 KiB. ``malloc_trim(0)`` returns every whole free page of every arena
(``MADV_DONTNEED``); it took 5 to 7 ms of CPU to give back 80 MB and under 0.4 ms with nothing to
give back, so a worker calls it after each swap and every
``TRIM_EVERY`` seconds. On a libc without it (musl) nothing happens.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRIM_EVERY = 30.0   # seconds; a bound on how long freed pages stay counted in RSS


def _libc(name: str) -> Any | None:
    """The C library's function ``name`` (``None`` where there is no such libc or function, e.g. musl)."""
    lib = ctypes.util.find_library("c")
    if lib is None:
        return None
    try:
        return getattr(ctypes.CDLL(lib), name)
    except (OSError, AttributeError):
        return None


def _find_trim() -> Callable[[int], int] | None:
    fn = _libc("malloc_trim")
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    result: Callable[[int], int] = fn
    return result


_TRIM = _find_trim()

# glibc's mallopt parameters (malloc.h): fixing either turns off its dynamic mmap threshold.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 20   # a relay's 256 KB reads and ciphertexts come from the heap, not a fresh mmap each
TRIM_THRESHOLD = 4 << 20   # free top of the heap kept between periodic trims, not given back after each chunk


def fix_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds for a relay's buffers; True when glibc took both.

    Why (decision 0011): a bulk transfer allocates and frees 256 KB buffers per chunk. With glibc's dynamic
    thresholds, depending on where the chunks fell, the top of the heap was trimmed after a chunk and faulted
    back in by the next: 8 k to 165 k page faults per GB downloaded, one round in four at 0.7x the C peers'
    MB per CPU-second. Fixed, 0 to 423. The memory this keeps is bounded by ``TRIM_THRESHOLD`` and handed
    back every ``TRIM_EVERY`` seconds by ``trim_forever`` anyway. Called once at a worker's start.
    """
    mallopt = _libc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def available() -> bool:
    """Whether this libc can give freed heap pages back (glibc: yes)."""
    return _TRIM is not None


def release() -> bool:
    """Return free heap pages to the kernel; True when some were returned."""
    if _TRIM is None:
        return False
    return bool(_TRIM(0))


def after_swap() -> bool:
    """After a snapshot swap: collect the old snapshot's reference cycles, then ``release``.

    Without the collection the old snapshot is still allocated when ``release`` runs (its objects sit
    in cycles until the next full collection), and its pages wait for the next periodic trim. A full
    collection at a reload, a rare event, is worth it; on the per-connection path it would not be.
    """
    gc.collect()
    return release()


def rss_kib() -> int | None:
    """This process's resident set, in KiB (``None`` off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def trim_forever(every: float = TRIM_EVERY) -> None:
    """Call ``release`` every ``every`` seconds until cancelled."""
    while True:
        await asyncio.sleep(every)
        release()


_FIRST: list[tracemalloc.Snapshot] = []
TRACE_ENV = "SNIPROXY_TRACEMALLOC"   # frames per traced allocation; set, the worker traces once it serves


def trace_if_asked() -> bool:
    """Start tracing Python allocations when ``SNIPROXY_TRACEMALLOC=N`` asks; True when tracing.

    Started after the worker is ready, not with ``PYTHONTRACEMALLOC``: tracing the imports and the
    first compile made workers too slow to answer their supervisor on a loaded machine.
    """
    frames = os.environ.get(TRACE_ENV, "")
    if frames.isdigit() and int(frames) > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(int(frames))
    return tracemalloc.is_tracing()


def heap_growth(limit: int = 8, frames: int = 4) -> list[str] | None:
    """Where the Python heap grew since the first call, when tracing (``trace_if_asked``); else ``None``.

    A diagnosis aid for a slow RSS rise: each line is ``size_diff KiB, count_diff, innermost <- callers``.
    Costs a snapshot of every traced block, so it only runs when the operator started tracing.
    """
    if not tracemalloc.is_tracing():
        return None
    snap = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
    if not _FIRST:
        _FIRST.append(snap)
        return []
    out = []
    for stat in snap.compare_to(_FIRST[0], "traceback")[:limit]:
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[-frames:][::-1])
        out.append(f"{stat.size_diff // 1024:+d} KiB {stat.count_diff:+d} {where}")
    return out
