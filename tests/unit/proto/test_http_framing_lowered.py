"""``check_framing`` skips the fields that bear on no framing with one set lookup, and takes the request reader's
names as they are (``lowered=True``, decision 0013): the same verdicts as the four comparisons per field it had,
whatever the case of the names the other callers pass."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.proto.http_rewrite import BadRequest, Framing, check_framing


def old_check_framing(headers: Sequence[tuple[bytes, bytes]]) -> Framing:
    """check_framing as it was before (main at fdf9453): the oracle."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    hosts = 0
    close = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"host":
            hosts += 1
        elif lname == b"content-length":
            if b"," in value:
                lengths.update(v.strip() for v in value.split(b","))
            else:
                lengths.add(value.strip())
        elif lname == b"transfer-encoding":
            codings += [v.strip().lower() for v in value.split(b",")]
        elif lname == b"connection" and not close:
            close = b"close" in [v.strip().lower() for v in value.split(b",")]
    if hosts > 1:
        raise BadRequest("more than one Host (RFC 9112 §3.2)")
    if lengths and codings:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise BadRequest("differing Content-Length values")
    length = 0
    if lengths:
        text = next(iter(lengths))
        if not text.isdigit():
            raise BadRequest("Content-Length is not a number")
        length = int(text)
    if codings and codings != [b"chunked"]:
        raise BadRequest(f"Transfer-Encoding {b', '.join(codings).decode('latin-1')!r} (only chunked)")
    return Framing(length, bool(codings), hosts == 1, close)


def outcome(fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args, **kw))
    except BadRequest as exc:
        return ("refused", str(exc))


NAMES = st.sampled_from([b"host", b"Host", b"HOST", b"content-length", b"Content-Length", b"transfer-encoding",
                         b"Transfer-Encoding", b"connection", b"Connection", b"content-type", b"soapaction",
                         b"x-other", b"hosts", b"content-lengths", b"connections", b""])
VALUES = st.sampled_from([b"", b"close", b" Close ", b"keep-alive", b"closed, x", b"12", b" 12 ", b"7, 7", b"7,8",
                          b"chunked", b"gzip, chunked", b"-1", b"h"])
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=8)


@settings(max_examples=500, deadline=None)
@given(FIELDS)
def test_check_framing_decides_as_before_whatever_the_case(fields: list[tuple[bytes, bytes]]) -> None:
    assert outcome(check_framing, fields) == outcome(old_check_framing, fields)


@settings(max_examples=500, deadline=None)
@given(FIELDS)
def test_lowered_names_decide_as_before(fields: list[tuple[bytes, bytes]]) -> None:
    low = [(n.lower(), v) for n, v in fields]   # (what the request reader passes)
    assert outcome(check_framing, low, lowered=True) == outcome(old_check_framing, low)


def test_each_framing_name_is_still_read() -> None:
    assert check_framing([(b"connection", b"close")], lowered=True).close
    assert check_framing([(b"host", b"a")], lowered=True).host
    assert check_framing([(b"content-length", b"3")], lowered=True).length == 3
    assert check_framing([(b"transfer-encoding", b"chunked")], lowered=True).chunked
    assert check_framing([(b"Connection", b"close")]).close   # (other callers: any case)
