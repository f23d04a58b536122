"""Generic test helpers shared by unit and integration tests (no peers, no fixtures with side effects).

Import them as ``from tests.conftest import free_port`` (``tests`` is a package, pytest registers this module
under that name).
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when running under CI (``CI=true``): missing peers then fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() == "true"


def fail_or_skip(reason: str) -> NoReturn:
    """``pytest.fail`` under ``CI=true`` (a peer that cannot start is a broken CI), else ``pytest.skip``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago (bind-probed with port 0).

    All probe sockets stay open until every port is chosen, so the ports are distinct. Another process may
    still take one before the caller binds it: callers retry on ``Address already in use``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port that was free on ``host`` a moment ago (see :func:`free_ports`)."""
    return free_ports(1, host)[0]
