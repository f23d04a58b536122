"""Fixtures of the driver tests: the test PKI, the event observer, the fake backend dialer, clean globals."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki, build
from sniproxy.driver import http_pool
from sniproxy.driver.shared import LIVE, OBSERVERS, STATS, Drain
from tests.unit.driver.kit import FakeDialer


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("driver-pki"))


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every ``connection`` event logged during the test; the driver's worker-wide state reset after."""
    seen: list[dict[str, Any]] = []
    OBSERVERS.append(seen.append)
    try:
        yield seen
    finally:
        for conn in list(LIVE):   # a test that leaves a connection open must not skew the next one's limits
            conn.goodbye()
        OBSERVERS.remove(seen.append)
        Drain.active = False
        http_pool._POOLS.clear()
        assert STATS.active == 0 and STATS.pending == 0 and not STATS.per_ip and not STATS.pending_per_ip


@pytest.fixture
async def dialer(monkeypatch: pytest.MonkeyPatch) -> FakeDialer:
    """Backend connections of this test's loop go to fake transports."""
    fake = FakeDialer()
    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", fake.create_connection)
    return fake
