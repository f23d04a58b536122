"""atheris harness: the backend->client IMAP filter (SMTP replies go through SmtpRelay: fuzz_smtp_relay).

Only ``ToClient`` and one final ``Stop``; partial and held lines bounded by ``max_line``; any chunking sends
the same bytes and closes the same way; the output is never longer than the input."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from sniproxy.proto.imap_relay import ImapBackendFilter
    from sniproxy.proto.relay import Stop, ToClient

from _harness import bytewise, main, plan, seeded

MAX_LINE = 80


def run(f: ImapBackendFilter, chunks: list[bytes]) -> tuple[bytes, object]:
    sent, close = bytearray(), None
    for chunk in chunks:
        actions = f.receive_data(chunk)
        if close is not None:
            assert actions == []
            continue
        assert len(f._line) <= MAX_LINE
        for action in actions:
            if isinstance(action, ToClient):
                sent += action.data
            else:
                assert isinstance(action, Stop)
                close = action
    return bytes(sent), close


def check(data: bytes) -> None:
    payload, chunks = plan(data)
    consume = bool(data[:1]) and data[0] & 0x40 != 0

    def factory() -> ImapBackendFilter:
        return ImapBackendFilter(consume_greeting=consume, max_line=MAX_LINE)

    whole = run(factory(), [payload])
    assert run(factory(), chunks) == whole
    assert run(factory(), bytewise(payload)) == whole
    assert len(whole[0]) <= len(payload)


SEEDS = seeded(0xC1, [b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
                      b"a OK [CAPABILITY IDLE STARTTLS] ok\r\n* 1 FETCH (BODY[] {5}\r\nhello)\r\n"])

if __name__ == "__main__":
    main(check, SEEDS)
