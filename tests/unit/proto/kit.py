"""Feeding a sans-IO dialog or filter in tests: chunks in, the bytes it sent and its other actions out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from tests.unit.fuzzkit import bytewise

__all__ = ["Fed", "both_ways", "bytewise", "run_chunks"]


class Fed(Protocol):
    """Anything fed bytes that answers with actions (pre-TLS dialogs, backend filters)."""

    def receive_data(self, data: bytes) -> Sequence[Any]: ...


def run_chunks(target: Fed, chunks: Iterable[bytes], out: type) -> tuple[bytes, list[Any]]:
    """The concatenated data of the ``out`` actions (``Send``, ``ToClient``) and the other actions, in order.

    Bytes to send after a final action are a bug in the target: asserted here for every test.
    """
    sent, other = bytearray(), list[Any]()
    for chunk in chunks:
        for action in target.receive_data(chunk):
            if isinstance(action, out):
                assert not other, f"{out.__name__} after a final action"
                sent += action.data
            else:
                other.append(action)
    return bytes(sent), other


def both_ways(make: Callable[[], Fed], data: bytes, out: type) -> tuple[bytes, list[Any]]:
    """Run ``data`` whole and byte by byte through two fresh targets; assert they agree; the outcome."""
    whole = run_chunks(make(), [data], out)
    assert run_chunks(make(), bytewise(data), out) == whole
    return whole
