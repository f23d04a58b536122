"""``workers: auto``: CPUs from the affinity mask and cgroup quotas, on fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from sniproxy.cpus import available_cpus, cgroup_cpu_quota


def tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc_file = tmp_path / "proc-self-cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def cpus(tmp_path: Path, proc: str, files: dict[str, str], affinity: int = 64) -> int:
    root, proc_file = tree(tmp_path, proc, files)
    return available_cpus(affinity=affinity, cgroup_root=root, proc_self_cgroup=proc_file)


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("200000 100000\n", 2),         # limits.cpu: 2
    ("150000 100000\n", 1),         # 1500m rounds down: two workers would be throttled
    ("50000 100000\n", 1),          # under one CPU: still one worker
    ("400000 50000\n", 8),          # another period
    ("max 100000\n", 64),           # no limit: the affinity
])
def test_v2_cpu_max_in_a_container(tmp_path: Path, cpu_max: str, expected: int) -> None:
    # inside a pod the cgroup namespace shows the pod's cgroup as the mount root and "0::/"
    assert cpus(tmp_path, "0::/\n", {"cpu.max": cpu_max}) == expected


def test_v2_host_path_and_ancestor_limit(tmp_path: Path) -> None:
    # the process's own cgroup has no limit, its parent (the pod) has 3 CPUs, the grandparent 6
    files = {"kubepods/cpu.max": "600000 100000\n", "kubepods/pod1/cpu.max": "300000 100000\n",
             "kubepods/pod1/ctr/cpu.max": "max 100000\n", "cpu.max": "max 100000\n"}
    assert cpus(tmp_path, "0::/kubepods/pod1/ctr\n", files) == 3


def test_v2_path_not_visible_falls_back_to_the_mount_root(tmp_path: Path) -> None:
    assert cpus(tmp_path, "0::/system.slice/docker-abc.scope\n", {"cpu.max": "200000 100000"}) == 2


def test_affinity_below_quota_wins(tmp_path: Path) -> None:
    assert cpus(tmp_path, "0::/\n", {"cpu.max": "800000 100000\n"}, affinity=2) == 2


def test_v1_cfs_quota(tmp_path: Path) -> None:
    proc = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    files = {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
             "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
             "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert cpus(tmp_path, proc, files) == 3


def test_v1_no_quota_is_minus_one(tmp_path: Path) -> None:
    proc = "4:cpu,cpuacct:/\n"
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert cpus(tmp_path, proc, files, affinity=5) == 5


def test_v1_separate_cpu_mount(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert cpus(tmp_path, "3:cpu:/\n", files) == 2


@pytest.mark.parametrize("text", ["garbage\n", "abc 100000\n", "100000 0\n", ""])
def test_odd_files_mean_no_limit(tmp_path: Path, text: str) -> None:
    assert cpus(tmp_path, "0::/\n", {"cpu.max": text}, affinity=4) == 4


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert available_cpus(affinity=3, cgroup_root=tmp_path / "none", proc_self_cgroup=tmp_path / "none") == 3
    assert cgroup_cpu_quota(cgroup_root=tmp_path, proc_self_cgroup=tmp_path / "missing") is None


def test_this_process_gets_at_least_one_and_at_most_its_affinity() -> None:
    import os

    n = available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))
