"""sniproxy.driver.http_pool: idle backend connections swept by one timer per pool (issue 16)."""

from __future__ import annotations

import asyncio

from sniproxy.config.model import Address
from sniproxy.driver.http_pool import BackendConn, BackendPool
from tests.unit.driver.kit import FakeTransport


def conn_of(pool: BackendPool) -> tuple[BackendConn, FakeTransport]:
    conn = BackendConn(pool)
    t = FakeTransport()
    conn.connection_made(t)   # type: ignore[arg-type]
    return conn, t


async def test_idle_connections_close_after_the_timeout_each_from_its_own_return() -> None:
    pool = BackendPool(Address("127.0.0.1", 1), max_idle=4, idle_timeout=0.5)
    a, ta = conn_of(pool)
    b, tb = conn_of(pool)
    pool.give(a)
    await asyncio.sleep(0.3)
    pool.give(b)
    await asyncio.sleep(0.3)           # a is 0.6 s idle, b 0.3 s (0.2 s margins: a loaded machine)
    assert ta.closed and not tb.closed and pool.idle == 1
    await asyncio.sleep(0.3)
    assert tb.closed and pool.idle == 0


async def test_taken_and_given_back_restarts_the_idle_time() -> None:
    pool = BackendPool(Address("127.0.0.1", 1), max_idle=4, idle_timeout=0.5)
    a, ta = conn_of(pool)
    for _ in range(4):                 # given back and taken again: never idle for 0.5 s in a row
        pool.give(a)
        await asyncio.sleep(0.2)
        assert pool.take() is a
    pool.give(a)
    await asyncio.sleep(0.1)
    assert not ta.closed and pool.take() is a
    assert pool.take() is None


async def test_full_pool_and_closed_connections() -> None:
    pool = BackendPool(Address("127.0.0.1", 1), max_idle=1, idle_timeout=10)
    a, ta = conn_of(pool)
    b, tb = conn_of(pool)
    pool.give(a)
    pool.give(b)                        # over max_idle: closed at once
    assert tb.closed and not ta.closed and pool.idle == 1
    a.connection_lost(None)             # an idle backend that goes away leaves the pool
    assert pool.idle == 0 and pool.take() is None
