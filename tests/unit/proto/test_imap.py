"""IMAP pre-TLS dialog: whole vs byte-by-byte, injection, limits (the backend filter: test_imap_relay.py)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.imap import ImapPreTls, imap_unavailable
from tests.unit.proto.kit import both_ways, bytewise, run_chunks

Outcome = tuple[bytes, list[Action]]


def run(target: ImapPreTls, chunks: Iterable[bytes]) -> Outcome:
    """Concatenated Send data and the list of other actions, in order."""
    return run_chunks(target, chunks, Send)


def both(factory: type[ImapPreTls], data: bytes, **kw: object) -> Outcome:
    """Run whole and byte by byte; assert they agree; return the outcome."""
    return both_ways(lambda: factory(**kw), data, Send)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- pre-TLS dialog

def test_greeting() -> None:
    assert ImapPreTls("mail.example").greeting() == [
        Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] mail.example ready\r\n")]


def test_bad_hostname() -> None:
    with pytest.raises(ValueError, match="ASCII"):
        ImapPreTls("evil\r\n* OK")


def test_full_dialog_to_starttls() -> None:
    data = b"a1 capability\r\na2 NOOP\r\na3 LOGIN bob secret\r\na4 AUTHENTICATE PLAIN\r\na5 STARTTLS\r\n"
    sent, other = both(ImapPreTls, data, hostname="h")
    assert sent == (b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n"
                    b"a2 OK NOOP completed\r\n"
                    b"a3 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
                    b"a4 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
                    b"a5 OK Begin TLS negotiation now\r\n")
    assert other == [StartTls()]
    assert b"secret" not in sent


def test_bare_lf_and_case() -> None:
    sent, other = both(ImapPreTls, b"x StartTLS\n", hostname="h")
    assert sent == b"x OK Begin TLS negotiation now\r\n"
    assert other == [StartTls()]


def test_logout() -> None:
    sent, other = both(ImapPreTls, b"z LOGOUT\r\n", hostname="h")
    assert sent == b"* BYE h logging out\r\nz OK LOGOUT completed\r\n"
    assert other == [Stop(Reason.CLIENT_QUIT)]


def test_unknown_and_untagged() -> None:
    sent, other = both(ImapPreTls, b"t SELECT INBOX\r\n\r\nNOOP\r\n* NOOP\r\nt{ NOOP\r\nt NOOP extra\r\n",
                       hostname="h")
    assert sent == (b"t BAD Command unknown or not allowed before STARTTLS\r\n"
                    + b"* BAD Missing or invalid tag or command\r\n" * 4
                    + b"t BAD Unexpected arguments\r\n")
    assert other == []


def test_starttls_injection_one_chunk() -> None:
    d = ImapPreTls("h")
    actions = d.receive_data(b"a STARTTLS\r\nb LOGIN x y\r\n")
    assert actions[-1] == Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")
    assert not any(isinstance(a, StartTls) for a in actions)
    sent = b"".join(a.data for a in actions if isinstance(a, Send))
    assert b"OK" not in sent
    assert d.finished
    assert d.receive_data(b"c NOOP\r\n") == []


def test_starttls_injection_is_answered_bad_with_the_reason() -> None:
    sent, other = run(ImapPreTls("h"), [b"a NOOP\r\na STARTTLS\r\nb LOGIN x y\r\n"])
    assert sent == b"a OK NOOP completed\r\na BAD [CLIENTBUG] Data pipelined after STARTTLS\r\n"
    assert other == [Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")]


@pytest.mark.parametrize("verb", [b"CAPABILITY", b"noop", b"LOGOUT", b"StartTLS"])
def test_argument_free_commands_with_arguments_are_bad_and_do_nothing(verb: bytes) -> None:
    """RFC 9051 §6.1, §6.2.1: a CAPABILITY, NOOP, LOGOUT or STARTTLS with arguments is answered BAD, not run."""
    sent, other = both(ImapPreTls, b"a " + verb + b" x\r\nb NOOP\r\n", hostname="h")
    assert sent == b"a BAD Unexpected arguments\r\nb OK NOOP completed\r\n"
    assert other == []


def test_the_dialog_keeps_no_per_instance_dict() -> None:
    """One per pre-TLS connection: slots all the way down (the base class has them, so must the subclass)."""
    assert not hasattr(ImapPreTls("h"), "__dict__")


def test_starttls_injection_partial_line() -> None:
    _, other = run(ImapPreTls("h"), [b"a NOOP\r\n", b"a STARTTLS\r\nb"])
    assert other == [Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")]


def test_starttls_with_args_is_bad_not_tls() -> None:
    sent, other = both(ImapPreTls, b"a STARTTLS now\r\n", hostname="h")
    assert sent == b"a BAD Unexpected arguments\r\n"
    assert other == []


def test_finished_ignores_later_data() -> None:
    d = ImapPreTls("h")
    assert not d.finished
    assert d.receive_data(b"a STARTTLS\r\n")[-1] == StartTls()
    assert d.finished
    assert d.receive_data(b"\x16\x03\x01 tls bytes") == []


def test_line_too_long() -> None:
    sent, other = both(ImapPreTls, b"a NOOP\r\n" + b"b " + b"x" * 100 + b"\r\nc NOOP\r\n",
                       hostname="h", max_line=64)
    assert sent == b"a OK NOOP completed\r\n* BYE Line too long\r\n"
    assert other == [Stop(Reason.LINE_TOO_LONG)]


def test_too_many_commands() -> None:
    sent, other = both(ImapPreTls, b"a NOOP\r\n" * 4, hostname="h", max_commands=3)
    assert sent == b"a OK NOOP completed\r\n" * 3 + b"* BYE Too many commands\r\n"
    assert other == [Stop(Reason.TOO_MANY_COMMANDS)]


def test_trailing_garbage_after_logout_is_ignored() -> None:
    sent, other = run(ImapPreTls("h"), [b"a LOGOUT\r\n\x00\xff garbage\r\nb NOOP\r\n"])
    assert other == [Stop(Reason.CLIENT_QUIT)]
    assert b"b OK" not in sent


_COMMANDS = st.sampled_from([b"a CAPABILITY", b"b NOOP", b"c LOGIN u p", b"d FOO", b"", b"x", b"e STARTTLS",
                             b"f LOGOUT", b"g AUTHENTICATE PLAIN", b"\x00\xff", b"h " + b"y" * 200])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_COMMANDS, st.sampled_from([b"\r\n", b"\n"])), max_size=12),
       st.binary(max_size=40))
def test_property_dialog(cmds: list[tuple[bytes, bytes]], tail: bytes) -> None:
    """Never raises, always ends after one final action, output bounded, chunking-invariant
    unless the whole feed saw an injection (byte-by-byte, the STARTTLS line stands alone)."""
    data = b"".join(c + e for c, e in cmds) + tail
    kw = {"hostname": "h", "max_line": 128, "max_commands": 8}
    whole = run(ImapPreTls(**kw), [data])  # type: ignore[arg-type]
    sent, other = whole
    assert len(other) <= 1
    assert len(sent) <= 9 * 100
    split = run(ImapPreTls(**kw), bytewise(data))  # type: ignore[arg-type]
    if other == [Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")]:
        assert split[1] == [StartTls()]
        assert split[0].startswith(sent[:sent.rfind(b"\r\n", 0, len(sent) - 2) + 2])
    else:
        assert split == whole
    if other == [StartTls()]:
        assert sent.endswith(b" OK Begin TLS negotiation now\r\n")


def test_unavailable() -> None:
    assert imap_unavailable("down\r\nnow") == b"* BYE [UNAVAILABLE] down  now\r\n"


def test_unavailable_text_is_ascii_whatever_the_detail() -> None:
    assert imap_unavailable("arr\u00eat\u00e9") == b"* BYE [UNAVAILABLE] arr?t?\r\n"
