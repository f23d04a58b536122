"""A worker must never outlive its supervisor (no orphan keeps serving an old certificate)."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> bool:
    """Ask the kernel for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG, Linux).

    Returns False when the parent is already gone (it died before the prctl took effect): the
    caller must then exit itself. The control channel's EOF is the second guard.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the channel EOF still ends us
        pass
    return os.getppid() == expected_parent
