"""``sniproxy.proto.pretls``: what the IMAP and SMTP pre-TLS dialogs share (hostname check, default limits,
state machine), driven through both dialogs. Written for what mutation testing found unguarded (issue 11)."""

from __future__ import annotations

import pytest

from sniproxy.errors import Reason
from sniproxy.proto.actions import Send, StartTls, Stop
from sniproxy.proto.imap import ImapPreTls
from sniproxy.proto.pretls import TRANSITIONS, PreTlsDialog, State, flush, one_line
from sniproxy.proto.smtp import SmtpPreTls

DIALOGS = (ImapPreTls, SmtpPreTls)
NOOP = {ImapPreTls: b"a NOOP\r\n", SmtpPreTls: b"NOOP\r\n"}


@pytest.mark.parametrize("factory", DIALOGS)
@pytest.mark.parametrize("hostname", ["a\rb", "a\nb", "a\0b", "mél.example", "\r", "\n", "\0"])
def test_hostname_must_be_one_ascii_line(factory: type[PreTlsDialog], hostname: str) -> None:
    with pytest.raises(ValueError, match=r"^hostname must be one line of ASCII$"):
        factory(hostname)


@pytest.mark.parametrize("factory", DIALOGS)
def test_a_plain_hostname_is_accepted_and_the_dialog_is_open(factory: type[PreTlsDialog]) -> None:
    d = factory("MX.Mail.example-1.test")                  # capitals included
    assert d.finished is False


@pytest.mark.parametrize("factory", DIALOGS)
def test_default_command_limit_is_32(factory: type[ImapPreTls] | type[SmtpPreTls]) -> None:
    d = factory("h")
    for _ in range(32):
        out = d.receive_data(NOOP[factory])
        assert all(isinstance(a, Send) for a in out) and not d.finished
    out = d.receive_data(NOOP[factory])
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.TOO_MANY_COMMANDS and d.finished


@pytest.mark.parametrize("factory", DIALOGS)
def test_default_line_limit_is_8192_bytes(factory: type[ImapPreTls] | type[SmtpPreTls]) -> None:
    noop = NOOP[factory]
    ok = noop[:-2] + b" " * (8192 - len(noop)) + b"\r\n"              # 8192 bytes with its CRLF
    assert len(ok) == 8192
    d = factory("h")
    assert not any(isinstance(a, Stop) for a in d.receive_data(ok))
    out = factory("h").receive_data(ok[:-2] + b" \r\n")                # 8193
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.LINE_TOO_LONG


def test_state_machine() -> None:
    assert TRANSITIONS[State.DIALOG] == frozenset({State.TLS, State.CLOSED})
    assert TRANSITIONS[State.TLS] == frozenset() and TRANSITIONS[State.CLOSED] == frozenset()
    assert {s.value for s in State} == {"dialog", "tls", "closed"}
    d = SmtpPreTls("h")
    out = d.receive_data(b"STARTTLS\r\n")
    assert isinstance(out[-1], StartTls) and d.finished


def test_the_base_dialog_has_no_words_of_its_own() -> None:
    """A protocol must say its greeting's limits and commands: the base never answers in its place."""
    for feed in (b"NOOP\r\n", b"x" * 9000 + b"\r\n"):
        with pytest.raises(NotImplementedError):
            PreTlsDialog("h", max_commands=1).receive_data(feed)
    d = PreTlsDialog("h", max_commands=0)
    with pytest.raises(NotImplementedError):
        d.receive_data(b"NOOP\r\n")


def test_one_line_and_flush() -> None:
    assert one_line("a\r\nb\xe9") == b"a  b?"
    out = bytearray(b"1 OK\r\n")
    assert flush(out, b"* BYE\r\n", Stop(Reason.CLIENT_QUIT)) == [Send(b"1 OK\r\n* BYE\r\n"), Stop(Reason.CLIENT_QUIT)]
