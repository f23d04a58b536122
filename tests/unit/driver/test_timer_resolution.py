"""Review of issue 16's HTTP change (f0f6dc3..20a2d9e): a finding's regression test (it failed before the fix).

The worker runs on uvloop (sniproxy/app.py), whose timers have millisecond resolution and fire up to
1 ms before a fractional ``call_at`` deadline. ``BackendPool._expire`` (and, the same way,
``HttpBack._response_timeout`` once a later request moved its deadline on) re-arms itself with
``call_at(deadline)`` whenever ``loop.time()`` is still short of the deadline: an early firing then
spins on the event loop (hundreds of callbacks, up to ~1 ms of CPU each time) until uvloop's clock
ticks. One idle connection's expiry should take one sweep, or a few, not hundreds.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import uvloop

from sniproxy.config.model import Address
from sniproxy.driver.http_pool import BackendConn, BackendPool


class _CountingLoop(uvloop.Loop):
    """Counts the pool sweeps it is asked to schedule, per pool. (Not a BackendPool subclass: in the shipped build
    the pool is compiled with mypyc, decision 0016, and an interpreted class cannot inherit from it.)"""

    def __init__(self) -> None:
        super().__init__()
        self.sweeps: dict[int, int] = {}

    def _count(self, callback: Callable[..., object]) -> None:
        if getattr(callback, "__name__", "") == "_expire":
            owner = id(getattr(callback, "__self__", None))
            self.sweeps[owner] = self.sweeps.get(owner, 0) + 1

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        self._count(callback)
        return super().call_at(when, callback, *args, context=context)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any,  # type: ignore[override]
                   context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        self._count(callback)
        return super().call_later(delay, callback, *args, context=context)


def test_one_idle_expiry_does_not_spin_the_loop_under_uvloop() -> None:
    calls = 0

    async def main() -> None:
        nonlocal calls
        worst = 0
        for i in range(40):
            await asyncio.sleep((i % 7) * 0.0004)   # various sub-millisecond phases
            loop = asyncio.get_running_loop()
            assert isinstance(loop, _CountingLoop)
            loop.sweeps.clear()   # (a new pool may reuse a freed one's id)
            pool = BackendPool(Address("127.0.0.1", 9), max_idle=4, idle_timeout=0.03 + (i % 3) * 0.07)
            conn = BackendConn(pool)
            pool.give(conn)
            while not conn.closed:  # noqa: ASYNC110 (polled: the pool closes it from a timer)
                await asyncio.sleep(0.001)
            worst = max(worst, loop.sweeps.get(id(pool), 0))
        calls = worst

    uvloop.run(main(), loop_factory=_CountingLoop)
    assert calls <= 3, f"{calls} sweeps for one idle connection's expiry"
