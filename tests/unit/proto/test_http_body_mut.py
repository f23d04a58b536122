"""ChunkedBody: the cases scripts/mutation.py found untested (issue 11), bytes in, pieces or BadChunk out.

Most are about *when* a malformed body is refused: a bare CR or LF, or chunk data not followed by
CR LF, must be refused on the read that shows it, not later when a line completes or the limit is
reached (a body that never completes would otherwise hold the connection until then).
"""

from __future__ import annotations

import pytest

from sniproxy.proto.http_body import BadChunk, ChunkedBody


def test_slotted() -> None:
    assert not hasattr(ChunkedBody(), "__dict__")


def test_default_limit_is_32_kib() -> None:
    dec = ChunkedBody()
    assert dec.feed(b"3;" + b"x" * 32766) == ([], False)     # 32768 bytes held: at the limit, not over
    with pytest.raises(BadChunk, match=r"^chunk line over 32768 bytes$"):
        dec.feed(b"x")


def test_limit_is_inclusive() -> None:
    dec = ChunkedBody(64)
    assert dec.feed(b"0\r\n" + b"X: 1\r\n" * 10 + b"Y:1") == ([], False)   # 63 bytes held
    assert dec.buffered == 63
    dec.feed(b"2")
    with pytest.raises(BadChunk, match=r"^trailer section over 64 bytes$"):
        dec.feed(b"3")


@pytest.mark.parametrize(("raw", "message"), [
    (b"\n", "bare LF in the chunk line"),           # at the very start
    (b"\n\r", "bare LF in the chunk line"),
    (b"3\n", "bare LF in the chunk line"),
    (b"3;x\n", "bare LF in the chunk line"),
    (b"\r\n", "bad chunk line"),                    # an empty chunk line, complete at once
    (b"\rx", "bare CR in the chunk line"),
    (b"3\rx", "bare CR in the chunk line"),
    (b"1\r\nx\r\n\n", "bare LF in the chunk line"),  # the next chunk line, checked from its start
    (b"1\r\nx\r\n\rx", "bare CR in the chunk line"),
    (b"0\r\nX: 1\r\n\n", "bare LF in the trailer section"),
    (b"0\r\nX: 1\r\nY\rZ", "bare CR in the trailer section"),
    (b"3\r\nabcX", "^chunk data not followed by CR LF$"),
    (b"3\r\nabc\rX", "^chunk data not followed by CR LF$"),
    (b"3\r\nabcXY0\r\n\r\n", "^chunk data not followed by CR LF$"),   # two bytes that are not CR LF
])
def test_refused_on_the_read_that_shows_it(raw: bytes, message: str) -> None:
    with pytest.raises(BadChunk, match=message):
        ChunkedBody().feed(raw)


def test_a_cr_at_the_end_of_a_read_is_checked_with_the_next() -> None:
    dec = ChunkedBody()
    assert dec.feed(b"3\r") == ([], False)
    with pytest.raises(BadChunk, match="bare CR in the chunk line"):
        dec.feed(b"x")
    dec = ChunkedBody()
    assert dec.feed(b"0\r\nX: 1\r") == ([], False)
    with pytest.raises(BadChunk, match="bare CR in the trailer section"):
        dec.feed(b"x")


def test_no_empty_pieces() -> None:
    # A read that ends exactly at the end of a chunk's data gives that data; the next read starts
    # at the CR LF after it, and gives no empty piece.
    dec = ChunkedBody()
    assert dec.feed(b"3\r\nabc") == ([b"abc"], False)
    assert dec.feed(b"\r\n2\r\nde") == ([b"de"], False)
    assert dec.feed(b"\r\n0\r\n\r\n") == ([], True)


def test_nothing_held_between_chunks() -> None:
    dec = ChunkedBody()
    assert dec.feed(b"3\r\nabc\r\n") == ([b"abc"], False)
    assert dec.buffered == 0


def test_rest_is_taken_once() -> None:
    dec = ChunkedBody()
    assert dec.feed(b"0\r\n\r\nNEXT") == ([], True)
    assert dec.rest() == b"NEXT"
    assert dec.buffered == 0


def test_the_scan_mark_follows_what_was_checked() -> None:
    # A line trickled a byte at a time is scanned once: the mark is at its end (before a final CR,
    # which the next read may complete), so each read looks only at its new bytes.
    dec = ChunkedBody()
    dec.feed(b"3;abc")
    assert dec._scanned == 5
    dec.feed(b"\r")
    assert dec._scanned == 5
    dec = ChunkedBody()
    dec.feed(b"0\r\nX: 1\r\nY")
    assert dec._scanned == 7
