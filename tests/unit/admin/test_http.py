"""sniproxy.admin.http: the admin endpoint's request parser (whole, byte by byte, bounded) and responses."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.admin.http import MAX_BODY, MAX_HEAD, HttpError, Request, RequestParser, Response, text

GET = b"GET /readyz?verbose=1 HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: kube-probe/1.29\r\n\r\n"
POST = b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"


def parse(data: bytes) -> Request | None:
    return RequestParser().feed(data)


def error_of(data: bytes) -> HttpError:
    with pytest.raises(HttpError) as info:
        RequestParser().feed(data)
    return info.value


def test_get_whole() -> None:
    req = parse(GET)
    assert req is not None
    assert (req.method, req.target, req.path, req.version) == ("GET", "/readyz?verbose=1", "/readyz", "HTTP/1.1")
    assert req.header("USER-AGENT") == "kube-probe/1.29" and req.header("accept") is None
    assert req.body == b""


def test_post_with_body() -> None:
    req = parse(POST)
    assert req is not None and req.method == "POST" and req.path == "/reload" and req.body == b"hello"


@pytest.mark.parametrize("data", [GET, POST])
def test_byte_by_byte_gives_the_same_request(data: bytes) -> None:
    parser = RequestParser()
    results = [parser.feed(data[i:i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1])
    assert results[-1] == parse(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(POST)), max_size=8))
def test_any_split_gives_the_same_request(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(POST)]
    parser = RequestParser()
    out = [parser.feed(POST[a:b]) for a, b in itertools.pairwise(bounds)]
    assert [r for r in out if r is not None] == [parse(POST)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * MAX_HEAD))
def test_random_bytes_never_crash_and_stay_bounded(data: bytes) -> None:
    parser = RequestParser()
    try:
        parser.feed(data)
    except HttpError as exc:
        assert exc.status in (400, 413, 431, 501, 505)


def test_head_too_large() -> None:
    assert error_of(b"GET /" + b"a" * MAX_HEAD + b" HTTP/1.1\r\n").status == 431
    # refused before the end of the head is seen: the buffer never grows past the limit
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HttpError):
        for _ in range(MAX_HEAD // 10 + 2):
            parser.feed(b"X-Pad: 12\r\n")


@pytest.mark.parametrize(("data", "status", "fragment"), [
    (b"GET /\r\n\r\n", 400, "request line"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/1"),
    (b"GET / SPDY\r\n\r\n", 400, "HTTP/1"),
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400, "origin form"),
    (b"G(T / HTTP/1.1\r\n\r\n", 400, "method"),
    (b"GET / HTTP/1.1\r\nBad header\r\n\r\n", 400, "header line"),
    (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400, "header line"),
    (b"GET / HTTP/1.1\r\nA: \xff\r\n\r\n", 400, "ASCII"),
    (b"POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "Transfer-Encoding"),
    (b"POST /reload HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "conflicting"),
    (b"POST /reload HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "malformed"),
    (b"POST /reload HTTP/1.1\r\nContent-Length: " + str(MAX_BODY + 1).encode() + b"\r\n\r\n", 413, "body"),
    (b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 400, "one request"),
])
def test_refusals(data: bytes, status: int, fragment: str) -> None:
    err = error_of(data)
    assert err.status == status and fragment in err.message


def test_response_render() -> None:
    raw = text(405, "no", Allow="POST").render()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 405 Method Not Allowed"
    assert b"Content-Length: 3" in lines and b"Connection: close" in lines and b"Allow: POST" in lines
    assert body == b"no\n"
    assert Response(200, b"abc").render(head_only=True).endswith(b"\r\n\r\n")
