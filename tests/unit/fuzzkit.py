"""Shared pieces of the ``test_fuzz_*`` property tests: settings, chunkings, byte-level mutations.

Budget: every fuzz property runs ``FUZZ_EXAMPLES`` examples (default 150) with a per-example deadline,
so the whole fuzz suite stays well under a minute in CI on two shared cores. A longer run (see
docs/fuzzing.md) only raises ``SNIPROXY_FUZZ_EXAMPLES``; the properties do not change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("SNIPROXY_FUZZ_EXAMPLES", "150"))

# The deadline catches a quadratic parser (an example taking seconds), not a slow CI box: generous.
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

T = TypeVar("T")


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates and out-of-range values ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, prev = [], 0
    for c in points:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


def bytewise(data: bytes) -> list[bytes]:
    """One chunk per byte (the worst case for a parser that assumes whole lines or records)."""
    return [data[i:i + 1] for i in range(len(data))]


def random_splits(source: st.DataObject, data: bytes, max_cuts: int = 24) -> list[bytes]:
    """A random chunking of ``data`` drawn from ``source`` (so failures shrink to a minimal chunking)."""
    if len(data) < 2:
        return [data]
    cuts = source.draw(st.lists(st.integers(1, len(data) - 1), max_size=max_cuts))
    return split_at(data, cuts)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid input from ``base`` with a few byte-level mutations: flip, insert, delete, truncate, extend."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        if op == "extend" or not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x0A, 0x0D, 0x20, 0x7F, 0x80, 0xFF, data[i] + 1 & 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)
