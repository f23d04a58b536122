"""atheris harness: the ClientHello parser. Only ``ClientHelloError`` may escape; any chunking gives the
same verdict as the whole input and as byte-by-byte feeding; buffers stay within one record / max_size."""

from __future__ import annotations

import ssl

import atheris

with atheris.instrument_imports():
    from sniproxy.proto.clienthello import ClientHelloError, ClientHelloParser

from _harness import bytewise, main, plan, seeded

MAX_SIZE = 4096


def verdict(chunks: list[bytes]) -> tuple[str, object]:
    parser = ClientHelloParser(max_size=MAX_SIZE)
    for chunk in chunks:
        try:
            info = parser.feed(chunk)
        except ClientHelloError as exc:
            return "error", str(exc)
        assert len(parser._rec) <= 5 + (1 << 14) and len(parser._hs) <= MAX_SIZE
        if info is not None:
            return "info", info
    return "more", None


def check(data: bytes) -> None:
    payload, chunks = plan(data)
    whole = verdict([payload])
    assert verdict(chunks) == whole, (whole, chunks)
    if len(payload) <= 160:
        # Byte by byte costs one instrumented feed per byte: kept for short inputs, where the early checks
        # of partial headers live; the random reads of ``plan`` cover long ones.
        assert verdict(bytewise(payload)) == whole


def _hello(sni: str | None, alpn: list[str]) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx.wrap_bio(incoming, outgoing, server_hostname=sni).do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


SEEDS = seeded(7, [_hello("frontimap.mssante.fr", ["imap"]), _hello(None, []), b"\x16\x03\x01\x00\x05\x01"])

if __name__ == "__main__":
    main(check, SEEDS)
