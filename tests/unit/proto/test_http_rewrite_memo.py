"""sniproxy.proto.http_rewrite: the per-name memo of StripRules and the Connection-less fast path (issue 16)."""

from __future__ import annotations

import pytest

from sniproxy.proto.http_rewrite import (
    BadRequest,
    Framing,
    StripRules,
    check_framing,
    strip_identity,
    without_hop_by_hop,
)


def test_verdicts_are_the_same_memoized_and_the_memo_is_bounded() -> None:
    rules = StripRules.build(["X-Card-Rpps"], ["X-Corp-*"])
    names = [b"X-Card-Rpps", b"x_card_rpps", b"X-Corp-User", b"accept", b"SSL_CLIENT_CERT", b"content-type"]
    first = [rules.is_identity(n) for n in names]
    assert first == [True, True, True, False, True, False]
    assert [rules.is_identity(n) for n in names] == first
    for i in range(2000):                     # a client inventing names cannot grow the memo for ever
        assert not rules.is_identity(b"x-made-up-%d" % i)
    assert len(rules._seen) <= 512
    assert [rules.is_identity(n) for n in names] == first
    assert rules == StripRules.build(["X-Card-Rpps"], ["X-Corp-*"])   # the memo is not part of equality
    kept, removed = strip_identity([(b"x_card_rpps", b"1"), (b"accept", b"*/*")], rules)
    assert kept == [(b"accept", b"*/*")] and removed == 1


def test_hop_by_hop_with_and_without_connection() -> None:
    assert without_hop_by_hop([(b"Keep-Alive", b"5"), (b"TE", b"trailers"), (b"X-A", b"1")]) == [(b"X-A", b"1")]
    assert without_hop_by_hop([(b"Connection", b"X-A, close"), (b"X-A", b"1"), (b"X-B", b"2")]) == [(b"X-B", b"2")]


def test_check_framing_returns_what_it_read() -> None:
    assert check_framing([(b"host", b"h"), (b"content-length", b" 12 ")]) == Framing(12, False, True, False)
    assert check_framing([(b"Transfer-Encoding", b"Chunked"), (b"connection", b"keep-alive, Close")]) == \
        Framing(0, True, False, True)
    assert check_framing([]) == Framing(0, False, False, False)
    for bad in ([(b"content-length", b"")], [(b"content-length", b"1"), (b"content-length", b"2")]):
        with pytest.raises(BadRequest):
            check_framing(bad)
