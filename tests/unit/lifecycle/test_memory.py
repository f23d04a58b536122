"""``lifecycle/memory``: freed heap pages go back to the kernel when a worker asks (issue 17's RSS steps)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sniproxy.lifecycle import memory

MIB = 1024
ROOT = Path(__file__).resolve().parents[3]


# The RSS figures below are only meaningful in a fresh interpreter: in the suite's process, with a heap of
# hundreds of MB already freed and kept by glibc, the 80 MB would reuse it and RSS would not move at all.
_FRESH = """
import gc, json, sys
from sniproxy.lifecycle import memory
case = sys.argv[1]
gc.disable()
out = {"before": memory.rss_kib()}
if case == "release":
    chunks = [bytes(4000) for _ in range(20_000)]
    pin = [bytes(4000) for _ in range(16)]
    out["grown"] = memory.rss_kib()
    del chunks
    out["held"] = memory.rss_kib()
    out["returned"] = memory.release()
else:
    class Node:
        def __init__(self):
            self.me = self
            self.chunks = [bytes(4000) for _ in range(20_000)]
    node = Node()
    pin = [bytes(4000) for _ in range(16)]
    del node
    out["held"] = memory.rss_kib()
    out["returned"] = memory.after_swap()
out["after"] = memory.rss_kib()
print(json.dumps(out))
"""


def _fresh(case: str) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", _FRESH, case], capture_output=True, text=True, timeout=120,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    result: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not memory.available(), reason="this libc has no malloc_trim (musl): nothing to release")
def test_release_gives_back_pages_freed_in_the_middle_of_the_heap() -> None:
    """80 MB freed below a live chunk stay in RSS (glibc trims only the top) until ``release``."""
    # 4000-byte objects: above pymalloc's 512-byte limit and below glibc's mmap threshold, so each is a
    # heap chunk; a pin sits above them and keeps glibc's own top-of-heap trim from reaching them.
    r = _fresh("release")
    assert r["grown"] - r["before"] > 60 * MIB
    assert r["held"] - r["before"] > 60 * MIB, "glibc returned the pages by itself: test is moot"
    assert r["returned"]
    assert r["held"] - r["after"] > 50 * MIB


def test_rss_is_read_from_proc() -> None:
    """The figure the worker logs with each ``snapshot`` event is a positive number of KiB."""
    rss = memory.rss_kib()
    assert rss is not None and rss > 1024


def test_trim_forever_releases_on_its_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's trimmer calls ``release`` once per period and stops when cancelled."""
    calls: list[float] = []

    async def run() -> None:
        loop = asyncio.get_running_loop()

        def counted() -> bool:
            calls.append(loop.time())
            return False

        monkeypatch.setattr(memory, "release", counted)
        start = loop.time()
        task = loop.create_task(memory.trim_forever(0.02))
        # Until three periods have run (bounded): a loaded machine delays them, never skips them.
        while len(calls) < 3 and loop.time() - start < 5:  # noqa: ASYNC110 (polled on purpose)
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed.append(loop.time() - start)

    elapsed: list[float] = []
    asyncio.run(run())
    assert 3 <= len(calls) <= elapsed[0] / 0.015 + 1   # at least three, never more often than the period
    assert all(b - a >= 0.015 for a, b in itertools.pairwise(calls))


def test_heap_growth_names_where_the_python_heap_grew() -> None:
    """Off unless tracing; when tracing, the first call is the reference and later calls name the growth."""
    import tracemalloc

    assert memory.heap_growth() is None
    memory._FIRST.clear()
    tracemalloc.start(4)
    try:
        assert memory.heap_growth() == []
        kept = [bytearray(1000) for _ in range(2000)]   # ~2 MB kept, allocated on this line
        lines = memory.heap_growth()
    finally:
        tracemalloc.stop()
        memory._FIRST.clear()
    assert lines and len(kept) == 2000
    top = lines[0]
    assert "test_memory.py:" in top and int(top.split()[0]) >= 1900, lines


def test_tracing_starts_only_when_the_operator_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SNIPROXY_TRACEMALLOC=N`` starts tracing with N frames; unset or not a positive number, nothing."""
    import tracemalloc

    for value in ("", "0", "yes"):
        monkeypatch.setenv(memory.TRACE_ENV, value)
        assert memory.trace_if_asked() is False
    monkeypatch.setenv(memory.TRACE_ENV, "3")
    try:
        assert memory.trace_if_asked() is True
        assert tracemalloc.get_traceback_limit() == 3
    finally:
        tracemalloc.stop()


@pytest.mark.skipif(not memory.available(), reason="this libc has no malloc_trim (musl): nothing to release")
def test_after_swap_frees_what_only_a_cycle_still_holds() -> None:
    """An old snapshot kept by reference cycles is collected first, then its pages go back (a trim alone
    would run while it is still allocated). The collector is off, so only after_swap can collect it."""
    r = _fresh("cycle")
    assert r["held"] - r["before"] > 60 * MIB
    assert r["held"] - r["after"] > 50 * MIB


# Whether a 900 KiB malloc comes from the heap ([heap], brk) or from its own mmap, in a fresh interpreter: glibc's
# dynamic mmap threshold starts at 128 KiB, so without fixed thresholds the chunk is mmapped.
_WHERE = """
import ctypes, ctypes.util, json, sys
from sniproxy.lifecycle import memory
took = memory.fix_thresholds() if sys.argv[1] == "fixed" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
ptr = libc.malloc(900 * 1024)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print(json.dumps({"took": took, "in_heap": any(int(a, 16) <= ptr < int(b, 16) for a, b in heap)}))
"""


def _where(case: str) -> dict[str, bool | None]:
    run = subprocess.run([sys.executable, "-c", _WHERE, case], capture_output=True, text=True, timeout=120,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    result: dict[str, bool | None] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not memory.available(), reason="not glibc (musl has no mallopt thresholds)")
def test_fixed_thresholds_keep_a_relay_sized_buffer_in_the_heap() -> None:
    """A buffer under ``MMAP_THRESHOLD`` comes from the heap once fixed (not a fresh mmap to fault in each time)."""
    assert memory.MMAP_THRESHOLD > 900 * 1024
    assert _where("default") == {"took": None, "in_heap": False}   # the case the fix is for, shown as it is
    assert _where("fixed") == {"took": True, "in_heap": True}


def test_a_worker_fixes_the_thresholds_before_it_serves() -> None:
    """``worker.main`` fixes them first: glibc places chunks as they come, so later is too late for the first."""
    import inspect

    from sniproxy.lifecycle import worker

    src = inspect.getsource(worker.main)
    assert "memory.fix_thresholds()" in src
    assert src.index("memory.fix_thresholds()") < src.index("asyncio.run(")
