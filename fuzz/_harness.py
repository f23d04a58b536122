"""What every atheris harness of ``fuzz/`` shares: turning one fuzzer input into a payload and its reads.

A harness gets one byte string per run. Its first byte picks how the rest is cut into reads (a
deterministic pseudo-random chunking), so the fuzzer explores chunkings as well as contents, and a
crash input replays exactly. Harnesses check properties (whole input vs those reads vs byte by byte),
not only the absence of crashes: a failed ``assert`` is a finding like any exception.

Run one: ``PYTHONPATH=. python fuzz/fuzz_clienthello.py -runs=100000 fuzz/corpus/clienthello``
(see docs/fuzzing.md). Each harness also exposes ``SEEDS`` (valid inputs to start from) and
``check(data)`` (one run, no atheris), which the pytest runner uses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def plan(data: bytes) -> tuple[bytes, list[bytes]]:
    """(payload, the payload cut into reads). ``data[0]`` seeds the cut sizes (1 to 64 bytes)."""
    if not data:
        return b"", [b""]
    state, payload = data[0] | 1, data[1:]
    chunks, pos = [], 0
    while pos < len(payload):
        # xorshift8: cheap, deterministic, and every seed gives a different mix of small and large reads
        state ^= (state << 3) & 0xFF
        state ^= state >> 5
        state ^= (state << 1) & 0xFF
        size = (state % 64) + 1
        chunks.append(payload[pos:pos + size])
        pos += size
    return payload, chunks or [b""]


def bytewise(payload: bytes) -> list[bytes]:
    """One read per byte."""
    return [payload[i:i + 1] for i in range(len(payload))]


def seeded(tag: int, payloads: Iterable[bytes]) -> list[bytes]:
    """Fuzzer inputs for the given payloads (the chunking byte ``tag`` first)."""
    return [bytes([tag]) + p for p in payloads]


def main(check: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    """Run ``check`` under atheris with the command line's libFuzzer options.

    ``--write-seeds=DIR`` (ours, removed before libFuzzer sees the options) first checks every seed
    and writes it into DIR, so ``--write-seeds=DIR DIR`` starts the fuzzer from valid inputs.
    """
    import atheris

    argv = list(sys.argv)
    for arg in [a for a in argv if a.startswith("--write-seeds=")]:
        argv.remove(arg)
        corpus = Path(arg.split("=", 1)[1])
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds):
            check(seed)   # a seed that fails is a bug in the harness or the parser: say so at once
            (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup(argv, check)
    atheris.Fuzz()
