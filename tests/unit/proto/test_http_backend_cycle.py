"""A finished BackendExchange leaves no reference cycle (decision 0015: the garbage collector ran every
~60 requests to free exchange <-> parser cycles, 12 objects per request)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

from sniproxy.proto.http_backend import BackendExchange, Event, ResponseBody, ResponseEnd, ResponseHead

HOST = [(b"host", b"ws.example")]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def posted(method: bytes = b"POST") -> BackendExchange:
    ex = BackendExchange()
    ex.request_parts(method, b"/ws", [*HOST, (b"content-length", b"2")], chunked=False, block=b"")
    ex.body(b"hi")
    ex.end()
    return ex


def cyclic_garbage(run: Callable[[], list[Event]]) -> int:
    """Objects only the collector frees after ``run``'s exchange is dropped."""
    events = run()
    assert events   # (the exchange did run)
    del events
    return gc.collect()


@pytest.mark.usefixtures("no_collector")
def test_a_complete_exchange_leaves_no_cycle() -> None:
    def run() -> list[Event]:
        ex = posted()
        events = ex.receive_data(OK)
        assert [type(e) for e in events] == [ResponseHead, ResponseBody, ResponseEnd]
        assert events[-1] == ResponseEnd(reusable=True)
        return events
    assert cyclic_garbage(run) == 0


@pytest.mark.usefixtures("no_collector")
def test_a_response_in_pieces_leaves_no_cycle() -> None:
    def run() -> list[Event]:
        ex = posted()
        events: list[Event] = []
        for i in range(len(OK)):
            events += ex.receive_data(OK[i:i + 1])
        assert events[-1] == ResponseEnd(reusable=True)
        return events
    assert cyclic_garbage(run) == 0


@pytest.mark.usefixtures("no_collector")
def test_a_head_response_leaves_no_cycle() -> None:
    def run() -> list[Event]:
        ex = posted(b"HEAD")
        events = ex.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
        assert events[-1] == ResponseEnd(reusable=False)
        return events
    assert cyclic_garbage(run) == 0


@pytest.mark.usefixtures("no_collector")
def test_a_response_framed_by_the_end_of_stream_leaves_no_cycle() -> None:
    def run() -> list[Event]:
        ex = posted()
        events = ex.receive_data(b"HTTP/1.1 200 OK\r\n\r\nbody")
        events += ex.receive_data(b"")
        assert events[-1] == ResponseEnd(reusable=False)
        return events
    assert cyclic_garbage(run) == 0


def test_bytes_after_the_end_still_forbid_reuse() -> None:
    # Once done, the exchange no longer holds its parser: what comes after is still noticed, never parsed.
    ex = posted()
    assert ex.receive_data(OK)[-1] == ResponseEnd(reusable=True)
    assert ex.receive_data(b"HTTP/1.1 200 OK\r\n") == []
    ex2 = posted()
    assert ex2.receive_data(OK + b"X")[-1] == ResponseEnd(reusable=False)


def test_finished_exchanges_do_not_share_state() -> None:
    # The parser they hold once done is one for all: the next exchange parses with its own.
    first = posted()
    first.receive_data(OK)
    second = posted()
    events = second.receive_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx")
    assert isinstance(events[0], ResponseHead) and events[0].status == 404
    assert events[-1] == ResponseEnd(reusable=True)
