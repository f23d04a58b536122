"""atheris harness: the bounded line buffer. Any chunking gives the same lines and the same too-long
point; the buffer holds at most ``max_line + 1`` bytes beyond the read just fed; ``pending`` is the
unread tail."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from sniproxy.proto.linebuf import LineBuffer, LineTooLong

from _harness import bytewise, main, plan, seeded


def drain(chunks: list[bytes], max_line: int) -> tuple[list[bytes], bool, bytes]:
    buf = LineBuffer(max_line)
    lines: list[bytes] = []
    for chunk in chunks:
        buf.feed(chunk)
        assert len(buf) <= max_line + 1 + len(chunk)
        while True:
            try:
                line = buf.next_line()
            except LineTooLong:
                return lines, True, b""
            if line is None:
                break
            assert line.endswith(b"\n") and len(line) <= max_line
            lines.append(line)
    return lines, False, buf.pending()


def check(data: bytes) -> None:
    payload, chunks = plan(data)
    max_line = (data[0] % 48) + 1 if data else 8
    whole = drain([payload], max_line)
    assert drain(chunks, max_line) == whole
    assert drain(bytewise(payload), max_line) == whole
    lines, too_long, pending = whole
    if not too_long:
        assert b"".join(lines) + pending == payload


SEEDS = seeded(40, [b"a NOOP\r\nb CAPABILITY\r\n", b"EHLO x\nSTARTTLS\r\n", b"x" * 100 + b"\n"])

if __name__ == "__main__":
    main(check, SEEDS)
