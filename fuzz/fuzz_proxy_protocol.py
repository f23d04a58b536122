"""atheris harness: the PROXY v1/v2 header parser. Only ``ProxyHeaderError`` may escape; any chunking gives
the same result (or the same stable error reason) and hands back the same bytes after the header;
the buffer never exceeds the header bounds; ``looks_like_header`` never calls a parsable header foreign."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from sniproxy.proto.proxy_encode import encode_v2
    from sniproxy.proto.proxy_protocol import ProxyHeaderParser, looks_like_header
    from sniproxy.proto.proxy_wire import MAX_V1_LINE, ProxyHeaderError

from _harness import bytewise, main, plan, seeded

MAX_V2 = 600


def verdict(chunks: list[bytes], require_crc: bool) -> tuple[str, object, bytes]:
    parser = ProxyHeaderParser(max_v2=MAX_V2, require_crc32c=require_crc)
    for i, chunk in enumerate(chunks):
        try:
            result = parser.feed(chunk)
        except ProxyHeaderError as exc:
            return "error", exc.reason, b""
        assert len(parser._buf) <= max(MAX_V1_LINE, MAX_V2)
        if result is not None:
            fields = (result.version, result.command, result.src, result.dst, result.tlvs, result.consumed)
            return "result", fields, result.rest + b"".join(chunks[i + 1:])
    return "more", None, b""


def check(data: bytes) -> None:
    payload, chunks = plan(data)
    require_crc = bool(data[:1]) and data[0] & 0x80 != 0
    whole = verdict([payload], require_crc)
    assert verdict(chunks, require_crc) == whole
    assert verdict(bytewise(payload), require_crc) == whole
    if whole[0] == "result":
        assert looks_like_header(payload[:16]) is not False


SEEDS = seeded(5, [b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 143\r\nA1 NOOP\r\n",
                   b"PROXY TCP6 2001:db8::7 ::1 1 2\r\n", b"PROXY UNKNOWN\r\n",
                   encode_v2(command="PROXY", src=("192.0.2.7", 1), dst=("127.0.0.1", 2), tlvs=[(0x20, b"\x01" * 5)],
                             crc32c=True) + b"\x16\x03\x01",
                   encode_v2(command="LOCAL", src=None, dst=None)])

if __name__ == "__main__":
    main(check, SEEDS)
