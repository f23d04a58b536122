"""atheris harness: the SMTP XCLIENT relay after TLS (client commands and backend replies, both ways).

The payload is a session: segments split on byte 0xFE alternate client bytes and backend replies.
Only relay actions, ``Stop`` last; partial lines, held bytes and the reply being assembled bounded;
cutting the client segments into other reads changes nothing once same-direction writes are merged."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from sniproxy.auth.login import LoginRule, decide
    from sniproxy.proto.relay import RelayAction, Stop, ToBackend, ToClient
    from sniproxy.proto.smtp_relay import HOLD_MAX, MAX_REPLY, SmtpRelay

from _harness import main, plan, seeded

MAX_LINE = 128
RULE = LoginRule(mapping={"810001234567": ("alice@example.test",)})
EHLO = b"250-mx\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n250-STARTTLS\r\n250 CHUNKING\r\n"


def merged(actions: list[RelayAction]) -> list[RelayAction]:
    out: list[RelayAction] = []
    for a in actions:
        if isinstance(a, ToClient | ToBackend):
            if not a.data:
                continue
            if out and type(out[-1]) is type(a):
                out[-1] = type(a)(out[-1].data + a.data)  # type: ignore[union-attr]
                continue
        out.append(a)
    return out


def play(script: list[tuple[bool, list[bytes]]]) -> list[RelayAction]:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="c", hostname="p", consume_greeting=True,
                  decide=lambda z: decide(RULE, {"idnat_ps": "810001234567"}, z), max_line=MAX_LINE)
    out = [*r.from_backend(b"220 mx\r\n"), *r.from_backend(EHLO), *r.from_backend(b"220 mx\r\n")]
    for client, chunks in script:
        for chunk in chunks:
            actions = r.from_client(chunk) if client else r.from_backend(chunk)
            if not (actions and isinstance(actions[-1], Stop)):
                assert len(r._bline) <= MAX_LINE and len(r._cbuf) <= max(HOLD_MAX, MAX_LINE) + len(chunk)
            assert sum(len(x) for x in r._reply) <= MAX_REPLY
            out += actions
            if actions and isinstance(actions[-1], Stop):
                return merged(out)
    return merged(out)


def check(data: bytes) -> None:
    payload, _ = plan(data)
    segments = payload.split(b"\xfe")
    whole = play([(i % 2 == 0, [s]) for i, s in enumerate(segments)])
    split = play([(i % 2 == 0, plan(data[:1] + s)[1] if i % 2 == 0 else [s]) for i, s in enumerate(segments)])
    assert split == whole


SEEDS = seeded(9, [b"EHLO c\r\nMAIL FROM:<a@b>\r\n\xfe250 ok\r\n250 ok\r\n\xfeDATA\r\n\xfe354 go\r\n\xfehi\r\n.\r\n",
                   b"AUTH EXTERNAL =\r\n\xfe220 ok\r\n\xfe\xfe250 ok\r\n", b"XCLIENT ADDR=1.2.3.4\r\nBDAT 1\r\n"])

if __name__ == "__main__":
    main(check, SEEDS)
