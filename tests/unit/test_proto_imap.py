"""IMAP pre-TLS dialog and backend filter: whole vs byte-by-byte, injection, limits, literals."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Close, Send, StartTls
from sniproxy.proto.imap import ImapBackendFilter, ImapPreTls, filter_capabilities, imap_unavailable

Outcome = tuple[bytes, list[Action]]


def run(target: ImapPreTls | ImapBackendFilter, chunks: Iterable[bytes]) -> Outcome:
    """Concatenated Send data and the list of non-Send actions, in order."""
    sent, other = bytearray(), list[Action]()
    for chunk in chunks:
        for action in target.receive_data(chunk):
            if isinstance(action, Send):
                assert not other, "Send after a final action"
                sent += action.data
            else:
                other.append(action)
    return bytes(sent), other


def bytewise(data: bytes) -> list[bytes]:
    return [bytes([b]) for b in data]


def both(factory: type[ImapPreTls] | type[ImapBackendFilter], data: bytes, **kw: object) -> Outcome:
    """Run whole and byte by byte; assert they agree; return the outcome."""
    whole = run(factory(**kw), [data])  # type: ignore[arg-type]
    assert run(factory(**kw), bytewise(data)) == whole  # type: ignore[arg-type]
    return whole


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
    assert other == [Close(Reason.CLIENT_QUIT)]


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
    assert actions[-1] == Close(Reason.STARTTLS_INJECTION, "data after STARTTLS")
    assert not any(isinstance(a, StartTls) for a in actions)
    sent = b"".join(a.data for a in actions if isinstance(a, Send))
    assert b"OK" not in sent
    assert d.finished
    assert d.receive_data(b"c NOOP\r\n") == []


def test_starttls_injection_partial_line() -> None:
    _, other = run(ImapPreTls("h"), [b"a NOOP\r\n", b"a STARTTLS\r\nb"])
    assert other == [Close(Reason.STARTTLS_INJECTION, "data after STARTTLS")]


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
    assert other == [Close(Reason.LINE_TOO_LONG)]


def test_too_many_commands() -> None:
    sent, other = both(ImapPreTls, b"a NOOP\r\n" * 4, hostname="h", max_commands=3)
    assert sent == b"a OK NOOP completed\r\n" * 3 + b"* BYE Too many commands\r\n"
    assert other == [Close(Reason.TOO_MANY_COMMANDS)]


def test_trailing_garbage_after_logout_is_ignored() -> None:
    sent, other = run(ImapPreTls("h"), [b"a LOGOUT\r\n\x00\xff garbage\r\nb NOOP\r\n"])
    assert other == [Close(Reason.CLIENT_QUIT)]
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
    if other == [Close(Reason.STARTTLS_INJECTION, "data after STARTTLS")]:
        assert split[1] == [StartTls()]
        assert split[0].startswith(sent[:sent.rfind(b"\r\n", 0, len(sent) - 2) + 2])
    else:
        assert split == whole
    if other == [StartTls()]:
        assert sent.endswith(b" OK Begin TLS negotiation now\r\n")


# ---------------------------------------------------------------------- backend filter

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS " \
           b"LOGINDISABLED AUTH=PLAIN] Dovecot ready.\r\n"


def test_greeting_swallowed_then_relay() -> None:
    f = ImapBackendFilter()
    assert not f.greeting_done
    assert f.receive_data(GREETING) == []
    assert f.greeting_done
    assert f.receive_data(b"* 1 EXISTS\r\n") == [Send(b"* 1 EXISTS\r\n")]


def test_greeting_passed_on_implicit_tls() -> None:
    sent, other = both(ImapBackendFilter, GREETING, consume_greeting=False)
    assert sent == (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ "
                    b"AUTH=PLAIN] Dovecot ready.\r\n")
    assert other == []


@pytest.mark.parametrize("line", [b"* BYE Server shutting down\r\n", b"* PREAUTH welcome\r\n",
                                  b"HTTP/1.1 400 Bad Request\r\n", b"* OKAY\r\n"])
def test_greeting_refused(line: bytes) -> None:
    sent, other = both(ImapBackendFilter, line + b"* 1 EXISTS\r\n")
    assert sent == b""
    assert len(other) == 1 and isinstance(other[0], Close)
    assert other[0].reason is Reason.BACKEND_REFUSED
    assert other[0].detail == line.rstrip(b"\r\n").decode()


def test_greeting_too_long() -> None:
    sent, other = both(ImapBackendFilter, b"* OK " + b"x" * 200, max_line=100)
    assert (sent, other) == (b"", [Close(Reason.BACKEND_PROTOCOL, "greeting too long")])


def test_capability_rewrite() -> None:
    data = GREETING + (b"* CAPABILITY IMAP4rev1 starttls STARTTLS-X XSTARTTLS LOGINDISABLED IDLE\r\n"
                       b"a OK Pre-login capabilities listed\r\n"
                       b"b OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] Logged in\r\n"
                       b"* capability STARTTLS\r\n"
                       b"* CAPABILITY\r\n"
                       b"c NO [CAPABILITY LOGINDISABLED] no\r\n"
                       b"* OK STARTTLS is just text here\r\n")
    sent, other = both(ImapBackendFilter, data)
    assert sent == (b"* CAPABILITY IMAP4rev1 STARTTLS-X XSTARTTLS IDLE\r\n"
                    b"a OK Pre-login capabilities listed\r\n"
                    b"b OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
                    b"* capability\r\n"
                    b"* CAPABILITY\r\n"
                    b"c NO [CAPABILITY] no\r\n"
                    b"* OK STARTTLS is just text here\r\n")
    assert other == []


def test_filter_capabilities_unit() -> None:
    assert filter_capabilities(b"* CAPABILITY STARTTLS IMAP4rev1\n") == b"* CAPABILITY IMAP4rev1\n"
    assert filter_capabilities(b"* CAPABILITYX STARTTLS\r\n") == b"* CAPABILITYX STARTTLS\r\n"
    assert filter_capabilities(b"* 1 FETCH (X STARTTLS)\r\n") == b"* 1 FETCH (X STARTTLS)\r\n"


BODY = (b"From: a@b\r\n\r\n* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
        b"b OK [CAPABILITY STARTTLS] x\r\n{5}\r\n")


def test_literal_passes_untouched() -> None:
    data = (GREETING + b"* 1 FETCH (BODY[] {" + str(len(BODY)).encode() + b"}\r\n" + BODY
            + b" FLAGS (\\Seen))\r\n* CAPABILITY STARTTLS IDLE\r\na OK done\r\n")
    sent, other = both(ImapBackendFilter, data)
    assert sent == (b"* 1 FETCH (BODY[] {" + str(len(BODY)).encode() + b"}\r\n" + BODY
                    + b" FLAGS (\\Seen))\r\n* CAPABILITY IDLE\r\na OK done\r\n")
    assert other == []


def test_literal_plus_literal8_and_chained_literals() -> None:
    part = b"* CAPABILITY STARTTLS\r\n"
    n = str(len(part)).encode()
    data = (GREETING + b"* 2 FETCH (BINARY[1] ~{" + n + b"}\r\n" + part + b" BODY[2] {" + n + b"+}\r\n"
            + part + b")\r\n* CAPABILITY STARTTLS\r\n")
    sent, _ = both(ImapBackendFilter, data)
    assert sent == data[len(GREETING):-len(b"* CAPABILITY STARTTLS\r\n")] + b"* CAPABILITY\r\n"


def test_literal_marker_in_status_text_is_not_a_literal() -> None:
    data = GREETING + b"a NO no such mailbox {5}\r\n* CAPABILITY STARTTLS\r\n"
    sent, _ = both(ImapBackendFilter, data)
    assert sent == b"a NO no such mailbox {5}\r\n* CAPABILITY\r\n"


def test_big_literal_forwarded_in_bulk() -> None:
    f = ImapBackendFilter()
    f.receive_data(GREETING)
    size = 10 * 1024 * 1024
    chunk = b"* CAPABILITY STARTTLS\r\n" * 2730 + b"1234"       # 65,524 bytes, not line-aligned
    head = f.receive_data(b"* 1 FETCH (BODY[] {" + str(size).encode() + b"}\r\n")
    assert head == [Send(b"* 1 FETCH (BODY[] {" + str(size).encode() + b"}\r\n")]
    total = 0
    while total + len(chunk) <= size:
        actions = f.receive_data(chunk)
        assert len(actions) == 1 and isinstance(actions[0], Send)
        assert actions[0].data is chunk                     # no copy, no scan
        total += len(chunk)
    rest = size - total
    actions = f.receive_data(b"z" * rest + b")\r\n* CAPABILITY STARTTLS\r\n")
    assert actions == [Send(b"z" * rest + b")\r\n* CAPABILITY\r\n")]


SHORT_GREETING = b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n"


def test_long_line_passes_through_and_literal_at_its_end_is_seen() -> None:
    long = b"* 1 FETCH (ENVELOPE (" + b"x" * 300 + b") BODY[] {23}\r\n"
    data = SHORT_GREETING + long + b"* CAPABILITY STARTTLS\r\n)\r\n" + b"* CAPABILITY STARTTLS\r\n"
    sent, _ = both(ImapBackendFilter, data, max_line=100)
    assert sent == long + b"* CAPABILITY STARTTLS\r\n)\r\n" + b"* CAPABILITY\r\n"


def test_long_capability_line_passed_unchanged() -> None:
    line = b"* CAPABILITY STARTTLS " + b"X" * 200 + b"\r\n"
    sent, _ = both(ImapBackendFilter, SHORT_GREETING + line, max_line=100)
    assert sent == line


def test_one_send_per_call_and_closed_after_refusal() -> None:
    f = ImapBackendFilter()
    two = b"* 1 EXISTS\r\n* 2 EXISTS\r\n"
    assert f.receive_data(GREETING + two) == [Send(two)]
    g = ImapBackendFilter()
    assert g.receive_data(b"* BYE no\r\n")[-1] == Close(Reason.BACKEND_REFUSED, "* BYE no")
    assert g.receive_data(b"* OK\r\n") == []
    assert not g.greeting_done


def test_unavailable() -> None:
    assert imap_unavailable("down\r\nnow") == b"* BYE [UNAVAILABLE] down  now\r\n"


_BACKEND_LINES = st.sampled_from([
    b"* CAPABILITY IMAP4rev1 STARTTLS\r\n", b"a OK [CAPABILITY STARTTLS X] ok\r\n", b"* 1 EXISTS\r\n",
    b"* 1 FETCH (BODY[] {7}\r\n", b"{3}\r\n", b"* OK {4}\r\n", b")\r\n", b"* 2 FETCH (X ~{0}\r\n",
    b"+ go\r\n", b"\r\n", b"x" * 90, b"\n"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_BACKEND_LINES, max_size=20), st.binary(max_size=60), st.booleans())
def test_property_backend_filter(lines: list[bytes], noise: bytes, consume: bool) -> None:
    """Never raises, chunking-invariant, never more output than input, buffer bounded."""
    data = SHORT_GREETING + b"".join(lines) + noise
    whole = run(ImapBackendFilter(consume_greeting=consume, max_line=64), [data])
    f = ImapBackendFilter(consume_greeting=consume, max_line=64)
    split = run(f, bytewise(data))
    assert split == whole
    assert len(f._line) <= 64
    assert len(whole[0]) <= len(data)
    assert whole[1] == []


@pytest.mark.parametrize(("stream", "owed"), [
    (b"", False),                                                    # no greeting yet: the connect path says it
    (GREETING, True),
    (GREETING + b"+ idling\r\n", True),                              # Dovecot stopped during IDLE
    (GREETING + b"* BYE Server shutting down.\r\n", False),          # the backend said it itself
    (GREETING + b"* bye logging out\r\na OK Logout completed.\r\n", False),
    (GREETING + b"* 1 FETCH (BODY[] {10}\r\n01234", False),           # cut inside a literal
    (GREETING + b"* 1 FETCH (BODY[] {5}\r\n01234", False),            # the response goes on after it
    (GREETING + b"* 1 FETCH (BODY[] {5}\r\n01234)\r\n", True),
    (GREETING + b"* 3 EXI", False),                                  # cut inside a line
])
def test_backend_owes_a_goodbye_only_between_responses(stream: bytes, owed: bool) -> None:
    f = ImapBackendFilter()
    f.receive_data(stream)
    assert f.owes_goodbye() is owed


# -- what mutation testing of imap.py found untested (issue 11) -------------------------------------------
class _Watcher:
    """A stand-in login dialog that records the backend lines it is shown."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    @property
    def extra_caps(self) -> bytes:
        return b"AUTH=EXTERNAL"

    def backend_line(self, line: bytes) -> None:
        self.lines.append(line)


def test_a_detached_login_dialog_sees_no_more_lines_and_adds_no_capability() -> None:
    w = _Watcher()
    f = ImapBackendFilter(auth=w)
    f.receive_data(GREETING)
    assert f.receive_data(b"* CAPABILITY IMAP4rev1\r\n") == [Send(b"* CAPABILITY IMAP4rev1 AUTH=EXTERNAL\r\n")]
    assert w.lines == [b"* CAPABILITY IMAP4rev1\r\n"]
    f.detach_auth()
    assert f.receive_data(b"* CAPABILITY IMAP4rev1\r\n") == [Send(b"* CAPABILITY IMAP4rev1\r\n")]
    assert w.lines == [b"* CAPABILITY IMAP4rev1\r\n"]


def test_a_greeting_text_ending_like_a_literal_is_not_one() -> None:
    """resp-text never ends in a literal: the next bytes are the next response, not literal data."""
    f = ImapBackendFilter(consume_greeting=False)
    assert f.receive_data(b"* OK ready {5}\r\n") == [Send(b"* OK ready {5}\r\n")]
    assert f.owes_goodbye()
    assert f.receive_data(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n") == [Send(b"* CAPABILITY IMAP4rev1\r\n")]
