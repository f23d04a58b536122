"""atheris harness: the IMAP proxy-side AUTHENTICATE EXTERNAL dialog (client side, backend answers).

The payload is a session: segments split on byte 0xFE alternate client bytes and backend lines. Only
relay actions, ``Stop`` last; the command buffer bounded by ``max_line``; the master password never in a
``Notice``; cutting the client segments into other reads changes nothing once writes are merged."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from sniproxy.auth.login import LoginRule, decide
    from sniproxy.proto.imap_auth import ImapExternal
    from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient

from _harness import main, plan, seeded

MAX_LINE = 128
RULE = LoginRule(mapping={"810001234567": ("alice@example.test",)})


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
    a = ImapExternal(decide=lambda z: decide(RULE, {"idnat_ps": "810001234567"}, z), master_user="master",
                     master_password="s3cret-pw", max_line=MAX_LINE)
    out: list[RelayAction] = []
    for client, chunks in script:
        for chunk in chunks:
            if not client:
                a.backend_line(chunk)
                out += a.take_notices()
                continue
            actions = a.client_data(chunk)
            assert len(a._buf) <= MAX_LINE or (actions and isinstance(actions[-1], Stop))
            for x in actions:
                assert not isinstance(x, Notice) or "s3cret-pw" not in repr(x.fields)
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


SEEDS = seeded(11, [b"t1 AUTHENTICATE EXTERNAL =\r\n\xfet1 OK done\r\n\xfet2 SELECT INBOX\r\n",
                    b"t1 AUTHENTICATE EXTERNAL\r\nYWxpY2VAZXhhbXBsZS50ZXN0\r\n", b"t8 APPEND INBOX {5}\r\nhello\r\n",
                    b"t6 LOGIN a b\r\n\xfet6 OK\r\n\xfeanything\r\n"])

if __name__ == "__main__":
    main(check, SEEDS)
