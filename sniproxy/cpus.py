"""How many CPUs this process may use: what ``workers: auto`` starts one worker per.

Owns: reading the CPU affinity mask and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``) of this process and of every cgroup above it.
Must not: change any limit, or fail: an unreadable or odd file means "no limit known there".

In a Kubernetes pod ``os.cpu_count()`` is the node's core count (64 on a big node) while the pod may be limited to
2 CPUs: one worker per node core would be throttled by the quota and multiply memory for nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_cpus(*, affinity: int | None = None, cgroup_root: Path = CGROUP_ROOT,
                   proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process may use: the affinity mask's size, lowered by a cgroup CPU quota; at least 1.

    A fractional quota rounds down (1.5 CPUs -> 1 worker) so that the workers together never exceed the quota and
    get throttled, which shows as latency spikes on every connection; below 1 CPU it is 1.
    """
    count = affinity if affinity is not None else _affinity()
    quota = cgroup_cpu_quota(cgroup_root=cgroup_root, proc_self_cgroup=proc_self_cgroup)
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not on Linux
        return os.cpu_count() or 1


def cgroup_cpu_quota(*, cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
                     ) -> float | None:
    """The smallest CPU quota (in CPUs) of this process's cgroup and its ancestors, or ``None`` for no quota."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = [q for d in _cgroup_dirs(lines, cgroup_root) if (q := _quota_of(d)) is not None]
    return min(quotas) if quotas else None


def _cgroup_dirs(lines: list[str], root: Path) -> Iterator[Path]:
    """Directories whose CPU limits apply to this process: its own cgroup up to the root of the mount."""
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        mount: Path | None = None
        if hierarchy == "0" and controllers == "":
            mount = root                                    # v2: one unified hierarchy
        elif "cpu" in controllers.split(","):
            mount = next((m for m in (root / controllers, root / "cpu,cpuacct", root / "cpu") if m.is_dir()),
                         None)                              # v1: the cpu controller's own mount
        if mount is None:
            continue
        # In a container the path is often the host's while the mount shows only the container's subtree: then
        # the mount's root is the container's cgroup.
        here = mount / path.lstrip("/")
        if not here.is_dir():
            here = mount
        while True:
            yield here
            if here == mount or mount not in here.parents:
                break
            here = here.parent


def _quota_of(directory: Path) -> float | None:
    v2 = _read(directory / "cpu.max")
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            return _ratio(parts[0], parts[1])
        return None
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is not None and period is not None:
        return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None      # v1 writes -1 for "no quota"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
