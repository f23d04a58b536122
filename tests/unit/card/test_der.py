"""sniproxy.card.der at its edges: the exact limits of the TLV reader (mutation testing found them unguarded)."""

from __future__ import annotations

import pytest

from sniproxy.card.der import der_integer, der_octet, der_text


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x0c\x00", ""),                                      # the shortest TLV: two bytes, empty value
    (b"\x0c\x01", None),                                    # a length with no value
    (b"\x0c", None),
    (b"\x0c\x80" + b"a" * 128, None),                       # 0x80: a long form with no length bytes
    (b"\x0c\x81\x80" + b"a" * 128, "a" * 128),
    (b"\x0c\x82\x01\x00" + b"a" * 256, "a" * 256),          # 2-byte length, minimal, the largest text taken
    (b"\x0c\x82\x00\x80" + b"a" * 128, None),               # 2-byte length that fits one byte: not DER
    (b"\x0c\x82\x00\xff" + b"a" * 255, None),
    (b"\x0c\x83\x00\x01\x00" + b"a" * 256, None),           # 3-byte length form, even with a big length
    (b"\x0c\x81\x7f" + b"a" * 127, None),                   # long form for a short length: not DER
    (b"\x0c\x03a b", "a b"),                                # a space is printable
    (b"\x0c\x02a\x1f", None),                               # the last control character below space
    (b"\x0c\x02a\x7f", None),                               # DEL
    (b"\x0c\x82\x01\x01" + b"a" * 257, None),
])
def test_der_text_edges(raw: bytes, expected: str | None) -> None:
    assert der_text(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x02\x08" + b"\x01" * 8, int.from_bytes(b"\x01" * 8, "big")),    # eight bytes: the largest taken
    (b"\x02\x09" + b"\x01" * 9, None),
    (b"\x02\x08\xff" + b"\x00" * 7, -(1 << 56)),
])
def test_der_integer_size_limit(raw: bytes, expected: int | None) -> None:
    assert der_integer(raw) == expected


def test_der_octet_is_one_byte_exactly() -> None:
    assert der_octet(b"\x04\x01\x7f") == 0x7F and der_octet(b"\x04\x00") is None
