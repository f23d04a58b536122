"""check_fields: the identity fields go to h11 as already parsed, so our grammar must be h11's, exactly."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.proto.http_rewrite import BadRequest, check_fields


def _h11_accepts(name: bytes, value: bytes) -> bool:
    try:
        h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"x"), (name, value)])
    except h11.LocalProtocolError:
        return False
    return True


def _ours_accepts(name: bytes, value: bytes) -> bool:
    try:
        check_fields([(name, value)])
    except BadRequest:
        return False
    return True


@pytest.mark.parametrize(("name", "value", "ok"), [
    (b"X-SSL-Client-S-DN", b"CN=ANNE MARTIN,O=X", True),
    (b"X-Card", b"", True),                         # an empty value is a legal field
    (b"X-Card", b"a\tb c", True),                   # inner whitespace
    (b"X-Card", b"\xe9t\xe9", True),                # obs-text
    (b"X-Card", b"a\r\nX-Injected: 1", False),      # header injection
    (b"X-Card", b"a\nb", False),
    (b"X-Card", b"a\x00b", False),
    (b"X-Card", b" a", False),                      # leading whitespace
    (b"X-Card", b"a ", False),                      # trailing whitespace
    (b"X Card", b"a", False),                       # not a token
    (b"", b"a", False),
    (b"X-Card:", b"a", False),
])
def test_check_fields_cases(name: bytes, value: bytes, ok: bool) -> None:
    assert _ours_accepts(name, value) is ok
    assert _h11_accepts(name, value) is ok


_EDGES = [b" ", b"\t", b"\r", b"\n", b"\x00", b"a", b"\x0b", b"\x0c", b"\x85"]
_BYTES = st.binary(max_size=12) | st.sampled_from(_EDGES).map(lambda b: b"a" + b + b"b")


# h11 also gives these names meaning (one Host, one length); it still checks that with _parsed=True.
_SEMANTIC = {b"host", b"content-length", b"transfer-encoding"}


@settings(max_examples=400, deadline=None)
@given(name=(st.binary(max_size=8) | st.just(b"X-Card")).filter(lambda n: n.lower() not in _SEMANTIC), value=_BYTES)
def test_check_fields_is_h11s_grammar(name: bytes, value: bytes) -> None:
    assert _ours_accepts(name, value) == _h11_accepts(name, value)


def test_check_fields_stops_at_first_bad_field() -> None:
    with pytest.raises(BadRequest, match="X-Bad"):
        check_fields([(b"X-Good", b"1"), (b"X-Bad", b"1\r\n2"), (b"X-Other", b"3")])
