"""BackendExchange: the cases scripts/mutation.py found untested (issue 11), bytes in, events out."""

from __future__ import annotations

import dataclasses
from typing import Any

import httptools
import pytest

from sniproxy.proto.http_backend import (
    BackendExchange,
    Informational,
    RequestError,
    ResponseBody,
    ResponseBroken,
    ResponseEnd,
    ResponseHead,
)
from tests.unit.proto.test_http_backend import HOST, body_of, exchange, feed

EVENTS = [Informational(100), ResponseHead(200, b"OK", []), ResponseBody(b"x"), ResponseEnd(reusable=True),
          ResponseBroken("x")]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_are_frozen_and_slotted(event: object) -> None:
    field = dataclasses.fields(event)[0].name   # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field, None)
    assert not hasattr(event, "__dict__")


def test_exchange_is_slotted() -> None:
    assert not hasattr(BackendExchange(), "__dict__")


@pytest.mark.parametrize(("headers", "chunked", "error"), [
    ([], False, "^missing Host header$"),
    ([*HOST, *HOST], False, "^several Host headers$"),
    ([*HOST, (b"content-length", b"3")], True, "^both Content-Length and chunked$"),
    ([*HOST, (b"content-length", b"x")], False, "^bad Content-Length$"),
])
def test_request_refusal_messages(headers: list[tuple[bytes, bytes]], chunked: bool, error: str) -> None:
    with pytest.raises(RequestError, match=error):
        BackendExchange().request(b"POST", b"/", headers, chunked=chunked)


def test_body_length_messages() -> None:
    ex = BackendExchange()
    ex.request(b"POST", b"/", [*HOST, (b"content-length", b"1")], chunked=False)
    with pytest.raises(RequestError, match=r"^body longer than its Content-Length$"):
        ex.body(b"ab")
    with pytest.raises(RequestError, match=r"^body shorter than its Content-Length$"):
        ex.end()


def test_defaults_before_any_request() -> None:
    # A fresh exchange is neither chunked nor HEAD: a body without a request head has no framing,
    # and a response is read with its body.
    ex = BackendExchange()
    with pytest.raises(RequestError):
        ex.body(b"x")
    assert ex.end() == b""
    events = BackendExchange().receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab")
    assert body_of(events) == b"ab" and isinstance(events[-1], ResponseEnd)


def test_switching_protocols_message() -> None:
    events = feed(exchange(), b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n")
    assert events == [ResponseBroken("backend switched protocols")]   # no Informational(101) first


def test_102_is_informational() -> None:
    events = feed(exchange(), b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert events[0] == Informational(102)
    assert events[-1] == ResponseEnd(reusable=True)


@pytest.mark.parametrize("status", [205, 305])
def test_unframed_response_of_other_statuses_ends_at_eof(status: int) -> None:
    # Only 204 and 304 have no body; any other unframed response runs to the end of the stream.
    ex = exchange()
    events = feed(ex, b"HTTP/1.1 %d X\r\n\r\nabc" % status)
    assert ex.receive_data(b"") == [ResponseEnd(reusable=False)]
    assert body_of(events) == b"abc"


def test_interim_response_state_is_not_carried_to_the_final_one() -> None:
    # The 103's fields, reason and framing belong to it alone.
    ex = exchange()
    events = feed(ex, b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\nLink: </a>\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nab")
    assert events[0] == Informational(103)
    assert events[1] == ResponseHead(200, b"OK", [(b"Server", b"s")])
    assert ex.receive_data(b"") == [ResponseEnd(reusable=False)]   # unframed: ends at EOF, not broken


def test_nothing_more_after_the_end() -> None:
    ex = exchange()
    assert feed(ex, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")[-1] == ResponseEnd(reusable=True)
    assert ex.receive_data(b"") == []
    assert ex.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") == []


def test_eof_reported_once() -> None:
    ex = exchange()
    assert ex.receive_data(b"") == [ResponseBroken("backend closed before the response ended")]
    assert ex.receive_data(b"") == []


def test_garbage_after_the_end_in_the_same_read_forbids_reuse() -> None:
    events = feed(exchange(), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\x00garbage")
    assert events[-1] == ResponseEnd(reusable=False)


class _BuggyCallbacks:
    """The exchange's own llhttp callbacks, except a raising ``on_header``. (Not a BackendExchange subclass: in the
    shipped build the exchange is compiled with mypyc, decision 0016, and an interpreted class cannot inherit from
    it.)"""

    def __init__(self, exchange: BackendExchange) -> None:
        self._exchange = exchange

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exchange, name)

    def on_header(self, name: bytes, value: bytes) -> None:
        raise RuntimeError("a bug in a callback")


def test_a_callback_bug_is_not_swallowed() -> None:
    # Only the exchange's own stop is expected from a callback; anything else propagates.
    ex = BackendExchange()
    ex._parser = httptools.HttpResponseParser(_BuggyCallbacks(ex))
    with pytest.raises(httptools.HttpParserCallbackError):
        ex.receive_data(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n")
