"""Run a command of the built image the way a pod runs it, without a container engine: the image's root
filesystem (buildah mount) bind-mounted read-only in a private mount namespace, the pod's volumes bound at their
mount paths, a tmpfs where the pod has an emptyDir, then chroot to it as the image's non-root user.

The network namespace is the host's (tests use loopback), as `podman run --network host` would. podman itself
cannot run here (setting the container's rlimits is refused in this sandbox), this does what it would do.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.deploy.conftest import tool

IMGBUILD_DIR = Path(os.environ.get("IMGBUILD_DIR", "/var/cache/sniproxy-imgbuild"))
DRIVER = os.environ.get("STORAGE_DRIVER", "overlay")


def buildah() -> list[str]:
    """buildah on the storage scripts/build-image.sh builds into."""
    return [tool("buildah"), "--root", str(IMGBUILD_DIR / f"storage-{DRIVER}"),
            "--runroot", str(IMGBUILD_DIR / f"run-{DRIVER}"), "--storage-driver", DRIVER]


@contextmanager
def image_root(tag: str) -> Iterator[Path]:
    """A working container of ``tag``, mounted: its root directory; removed on exit."""
    made = subprocess.run([*buildah(), "from", "--pull=never", tag], capture_output=True, text=True, timeout=300,
                          check=True)
    name = made.stdout.strip().splitlines()[-1]
    try:
        mounted = subprocess.run([*buildah(), "mount", name], capture_output=True, text=True, timeout=60, check=True)
        yield Path(mounted.stdout.strip())
    finally:
        subprocess.run([*buildah(), "rm", name], capture_output=True, timeout=120, check=False)


def pod_command(root: Path, argv: list[str], *, user: str, env: dict[str, str], binds: dict[str, Path],
                tmpfs: list[str], workdir: str = "/") -> list[str]:
    """argv for ``subprocess``: ``argv`` run in ``root`` read-only, as ``user`` (``UID:GID``), with ``binds``
    (mount path -> host directory, read-only) and ``tmpfs`` (writable mount paths). The process started execs
    into the command, so signals sent to it reach the command itself."""
    r = shlex.quote(str(root))
    script = [f"mount --bind {r} {r}", f"mount -o remount,bind,ro {r}"]
    for path in sorted(tmpfs):
        script.insert(0, f"mkdir -p {r}{shlex.quote(path)}")
        script.append(f"mount -t tmpfs -o mode=1777 tmpfs {r}{shlex.quote(path)}")
    for path, host in sorted(binds.items()):
        # the runtime makes mount points, as a kubelet does (in the container's own layer, before ro)
        script.insert(0, f"mkdir -p {r}{shlex.quote(path)}")
        script.append(f"mount --bind {shlex.quote(str(host))} {r}{shlex.quote(path)}")
        script.append(f"mount -o remount,bind,ro {r}{shlex.quote(path)}")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    script.append(f"cd {r}{shlex.quote(workdir)}")
    script.append(f"exec chroot --userspec={shlex.quote(user)} {r} /usr/bin/env -i {env_args} "
                  + " ".join(shlex.quote(a) for a in argv))
    return [tool("unshare"), "--mount", "--propagation", "private", "/bin/sh", "-ec", " && ".join(script)]
