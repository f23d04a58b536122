"""atheris harness: the IMAP and SMTP pre-TLS dialogs (the top bit of the first byte picks one).

Only ``Send`` then one final ``StartTls``/``Stop``; the line buffer bounded; any chunking gives the same
replies and end, except that bytes in the same read as STARTTLS must make it an injection refusal."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from sniproxy.errors import Reason
    from sniproxy.proto.actions import Send, StartTls, Stop
    from sniproxy.proto.imap import ImapPreTls
    from sniproxy.proto.smtp import SmtpPreTls

from _harness import bytewise, main, plan, seeded

MAX_LINE = 96
INJECTION = Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")


def run(dialog: ImapPreTls | SmtpPreTls, chunks: list[bytes]) -> tuple[bytes, object, int]:
    sent, final, fed = bytearray(), None, 0
    for chunk in chunks:
        actions = dialog.receive_data(chunk)
        if final is not None:
            assert actions == []
            continue
        fed += len(chunk)
        assert len(dialog._lines) <= MAX_LINE + 1 + len(chunk)
        for i, action in enumerate(actions):
            if isinstance(action, Send):
                sent += action.data
            else:
                assert isinstance(action, StartTls | Stop) and i == len(actions) - 1
                final = action
    return bytes(sent), final, fed


def check(data: bytes) -> None:
    payload, chunks = plan(data)
    imap = bool(data[:1]) and data[0] & 0x80 != 0

    def factory() -> ImapPreTls | SmtpPreTls:
        return (ImapPreTls if imap else SmtpPreTls)("h.example", max_line=MAX_LINE, max_commands=16)

    byte = run(factory(), bytewise(payload))
    for used in ([payload], chunks):
        outcome = run(factory(), used)
        if byte[1] != StartTls():
            assert outcome[:2] == byte[:2]
            continue
        ends = {sum(len(c) for c in used[:i + 1]) for i in range(len(used))}
        if byte[2] in ends:
            assert outcome[:2] == byte[:2]
        else:
            assert outcome[1] == INJECTION


SEEDS = seeded(0x83, [b"a CAPABILITY\r\nb LOGIN u p\r\nc STARTTLS\r\n", b"a STARTTLS\r\nb LOGIN x y\r\n"]) + \
    seeded(0x03, [b"EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\n", b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x>\r\n"])

if __name__ == "__main__":
    main(check, SEEDS)
