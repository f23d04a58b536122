"""PID 1 duties: reap the orphans of the namespace the supervisor adopts.

Owns: finding and reaping exited children the supervisor did not start. Must not: touch the
supervisor's own workers (the caller names them) or any child the ``multiprocessing`` module
tracks (it reaps those itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

from sniproxy.observability.log import get_logger

_log = get_logger("sniproxy.app")   # the logger name it had before the split: log queries match it
REAP_EVERY = 2.0           # as PID 1: how often exited orphans are reaped


async def reap_forever(reap: Callable[[], object]) -> None:
    """As PID 1 (a container without an init), orphans of the namespace become our children: reap
    the ones that exit (a killed worker's CRL helper), or they stay zombies for the pod's life."""
    while True:
        await asyncio.sleep(REAP_EVERY)
        reap()


def reap_adopted(workers: set[int]) -> list[int]:
    """Reap exited children other than ``workers`` and the ``multiprocessing`` ones; their pids."""
    ours = workers | {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    me = str(os.getpid())
    reaped = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and fields[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
                reaped.append(int(entry))
    if reaped:
        _log.info("reaped_orphans", pids=reaped)
    return reaped
