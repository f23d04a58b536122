"""SMTP pre-TLS dialog and backend filter: whole vs byte-by-byte, injection, limits, EHLO rewrite."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.smtp import SmtpPreTls, smtp_unavailable
from tests.unit.proto.kit import bytewise, run_chunks

Outcome = tuple[bytes, list[Action]]
NEED_TLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
EHLO_REPLY = b"250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"


def run(target: SmtpPreTls, chunks: Iterable[bytes]) -> Outcome:
    """Concatenated Send data and the list of other actions, in order."""
    return run_chunks(target, chunks, Send)


def dialog(data: bytes, **kw: int) -> Outcome:
    whole = run(SmtpPreTls("mx.test", **kw), [data])
    assert run(SmtpPreTls("mx.test", **kw), bytewise(data)) == whole
    return whole


# ---------------------------------------------------------------------- pre-TLS dialog

def test_greeting() -> None:
    assert SmtpPreTls("mx.test").greeting() == [Send(b"220 mx.test ESMTP ready\r\n")]


def test_bad_hostname() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        SmtpPreTls("a\r\n250 x")


def test_dialog_to_starttls() -> None:
    data = (b"EHLO client.example\r\nhelo c\r\nNOOP hello\r\nRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
            b"DATA\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\nVRFY x\r\nEXPN y\r\nBDAT 10 LAST\r\n"
            b"XCLIENT ADDR=1.2.3.4\r\n"
            b"starttls\r\n")
    sent, other = dialog(data)
    assert sent == (EHLO_REPLY + b"250 mx.test\r\n" + b"250 2.0.0 OK\r\n" * 2 + NEED_TLS * 8
                    + b"220 2.0.0 Ready to start TLS\r\n")
    assert other == [StartTls()]
    assert b"PIPELINING" not in sent and b"AUTH" not in sent


def test_syntax_errors() -> None:
    sent, other = dialog(b"EHLO\r\nHELO \r\nSTARTTLS now\r\nRSET x\r\nQUIT x\r\n\r\n")
    assert sent == (b"501 5.5.4 Syntax: EHLO hostname\r\n501 5.5.4 Syntax: HELO hostname\r\n"
                    + b"501 5.5.4 Syntax error in parameters\r\n" * 3
                    + b"500 5.5.2 Syntax error, command unrecognized\r\n")
    assert other == []


def test_quit_and_bare_lf() -> None:
    sent, other = dialog(b"EHLO x\nQUIT\n")
    assert sent == EHLO_REPLY + b"221 2.0.0 Bye\r\n"
    assert other == [Stop(Reason.CLIENT_QUIT)]


def test_starttls_injection() -> None:
    d = SmtpPreTls("mx.test")
    actions = d.receive_data(b"STARTTLS\r\nMAIL FROM:<a>\r\n")
    assert actions == [Send(b"554 5.5.1 Error: command pipelined after STARTTLS\r\n"),
                       Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")]
    assert d.finished
    assert d.receive_data(b"RCPT TO:<b>\r\n") == []


def test_starttls_injection_partial_and_after_ehlo() -> None:
    _, other = run(SmtpPreTls("h"), [b"EHLO a\r\n", b"EHLO a\r\nSTARTTLS\r\nM"])
    assert other == [Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")]


def test_after_starttls_data_ignored() -> None:
    d = SmtpPreTls("h")
    assert d.receive_data(b"STARTTLS\r\n") == [Send(b"220 2.0.0 Ready to start TLS\r\n"), StartTls()]
    assert d.finished
    assert d.receive_data(b"\x16\x03\x01\x00") == []


def test_line_too_long() -> None:
    sent, other = dialog(b"NOOP\r\nMAIL FROM:<" + b"a" * 200 + b">\r\nQUIT\r\n", max_line=100)
    assert sent == (b"250 2.0.0 OK\r\n500 5.5.0 Line too long\r\n"
                    b"421 4.7.0 mx.test Closing connection\r\n")
    assert other == [Stop(Reason.LINE_TOO_LONG)]


def test_too_many_commands() -> None:
    sent, other = dialog(b"NOOP\r\n" * 5, max_commands=4)
    assert sent == b"250 2.0.0 OK\r\n" * 4 + b"421 4.7.0 mx.test Too many commands, closing connection\r\n"
    assert other == [Stop(Reason.TOO_MANY_COMMANDS)]


def test_garbage_is_not_echoed() -> None:
    sent, other = dialog(b"\x00\xff\x1b[31m evil\r\n")
    assert sent == NEED_TLS
    assert other == []


_COMMANDS = st.sampled_from([b"EHLO a", b"HELO b", b"NOOP", b"RSET", b"QUIT", b"STARTTLS", b"MAIL FROM:<x>",
                             b"", b"\x00\xfe", b"DATA", b"X" * 150, b"STARTTLS x"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_COMMANDS, st.sampled_from([b"\r\n", b"\n"])), max_size=12),
       st.binary(max_size=40))
def test_property_dialog(cmds: list[tuple[bytes, bytes]], tail: bytes) -> None:
    """Never raises, at most one final action, output bounded, chunking-invariant except injection."""
    data = b"".join(c + e for c, e in cmds) + tail
    whole = run(SmtpPreTls("h", 128, 8), [data])
    sent, other = whole
    assert len(other) <= 1
    assert len(sent) <= 9 * 100
    split = run(SmtpPreTls("h", 128, 8), bytewise(data))
    if other == [Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")]:
        assert split[1] == [StartTls()]
        assert split[0].endswith(b"220 2.0.0 Ready to start TLS\r\n")
        assert sent.endswith(b"554 5.5.1 Error: command pipelined after STARTTLS\r\n")
        assert split[0][:-32] == sent[:-53]
    else:
        assert split == whole


def test_unavailable() -> None:
    assert smtp_unavailable("try later\nnow") == b"421 4.3.0 try later now\r\n"


def test_the_dialog_has_no_instance_dict() -> None:
    """One per pre-TLS connection: slots all the way down (issue 11: kills delete `__slots__ = ()`)."""
    assert not hasattr(SmtpPreTls("h"), "__dict__")
