"""IMAP after TLS (``proto/imap_relay.py``): the backend filter, whole vs byte-by-byte, literals, limits;
``ImapRelay`` as a ``MailRelay`` (the EXTERNAL dialog itself: test_imap_auth.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.auth.login import LoginRule, decide
from sniproxy.errors import Reason
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.imap_relay import ImapBackendFilter, ImapRelay, filter_capabilities
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient
from tests.unit.proto.kit import both_ways, bytewise, run_chunks

Outcome = tuple[bytes, list[RelayAction]]


def run(target: ImapBackendFilter, chunks: Iterable[bytes]) -> Outcome:
    """Concatenated ToClient data and the list of other actions, in order."""
    return run_chunks(target, chunks, ToClient)


def both(factory: type[ImapBackendFilter], data: bytes, **kw: object) -> Outcome:
    """Run whole and byte by byte; assert they agree; return the outcome."""
    return both_ways(lambda: factory(**kw), data, ToClient)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- backend filter

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS " \
           b"LOGINDISABLED AUTH=PLAIN] Dovecot ready.\r\n"


def test_greeting_swallowed_then_relay() -> None:
    f = ImapBackendFilter()
    assert not f.greeting_done
    assert f.receive_data(GREETING) == []
    assert f.greeting_done
    assert f.receive_data(b"* 1 EXISTS\r\n") == [ToClient(b"* 1 EXISTS\r\n")]


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
    assert len(other) == 1 and isinstance(other[0], Stop)
    assert other[0].reason is Reason.BACKEND_REFUSED
    assert other[0].detail == line.rstrip(b"\r\n").decode()


def test_greeting_too_long() -> None:
    sent, other = both(ImapBackendFilter, b"* OK " + b"x" * 200, max_line=100)
    assert (sent, other) == (b"", [Stop(Reason.BACKEND_PROTOCOL, "greeting too long")])


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
    assert head == [ToClient(b"* 1 FETCH (BODY[] {" + str(size).encode() + b"}\r\n")]
    total = 0
    while total + len(chunk) <= size:
        actions = f.receive_data(chunk)
        assert len(actions) == 1 and isinstance(actions[0], ToClient)
        assert actions[0].data is chunk                     # no copy, no scan
        total += len(chunk)
    rest = size - total
    actions = f.receive_data(b"z" * rest + b")\r\n* CAPABILITY STARTTLS\r\n")
    assert actions == [ToClient(b"z" * rest + b")\r\n* CAPABILITY\r\n")]


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
    assert f.receive_data(GREETING + two) == [ToClient(two)]
    g = ImapBackendFilter()
    assert g.receive_data(b"* BYE no\r\n")[-1] == Stop(Reason.BACKEND_REFUSED, "* BYE no")
    assert g.receive_data(b"* OK\r\n") == []
    assert not g.greeting_done


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
    assert f.receive_data(b"* CAPABILITY IMAP4rev1\r\n") == [ToClient(b"* CAPABILITY IMAP4rev1 AUTH=EXTERNAL\r\n")]
    assert w.lines == [b"* CAPABILITY IMAP4rev1\r\n"]
    f.detach_auth()
    assert f.receive_data(b"* CAPABILITY IMAP4rev1\r\n") == [ToClient(b"* CAPABILITY IMAP4rev1\r\n")]
    assert w.lines == [b"* CAPABILITY IMAP4rev1\r\n"]


def test_a_greeting_text_ending_like_a_literal_is_not_one() -> None:
    """resp-text never ends in a literal: the next bytes are the next response, not literal data."""
    f = ImapBackendFilter(consume_greeting=False)
    assert f.receive_data(b"* OK ready {5}\r\n") == [ToClient(b"* OK ready {5}\r\n")]
    assert f.owes_goodbye()
    assert f.receive_data(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n") == [ToClient(b"* CAPABILITY IMAP4rev1\r\n")]


# ---------------------------------------------------------------------- ImapRelay (both directions)
RULE = LoginRule(mapping={"810001234567": ("alice@example.test", "cabinet@example.test")})
CARD = {"idnat_ps": "810001234567"}
DOVECOT = b"* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED AUTH=PLAIN] Dovecot ready.\r\n"


def _relay(*, consume: bool = True, login: bool = True) -> ImapRelay:
    if not login:
        return ImapRelay(consume_greeting=consume, login=None)
    return ImapRelay(consume_greeting=consume, login=ImapExternal(
        decide=lambda z: decide(RULE, CARD, z), master_user="proxy-master", master_password="pw"))


def _plain(authzid: str) -> bytes:
    return base64.b64encode(f"{authzid}\0proxy-master\0pw".encode())


def test_relay_is_ready_once_the_greeting_is_accepted() -> None:
    r = _relay()
    assert not r.ready
    assert r.from_backend(DOVECOT[:10]) == []
    assert not r.ready
    assert r.from_backend(DOVECOT[10:]) == []          # STARTTLS listener: the client had our greeting
    assert r.ready


@pytest.mark.parametrize(("login", "caps"), [(True, b"AUTH=PLAIN AUTH=EXTERNAL"), (False, b"AUTH=PLAIN")])
def test_relay_passes_the_greeting_on_implicit_tls_with_external_only_when_the_proxy_answers_it(
        login: bool, caps: bytes) -> None:
    r = _relay(consume=False, login=login)
    greeting = b"* OK [CAPABILITY IMAP4rev1 SASL-IR " + caps + b"] Dovecot ready.\r\n"
    assert r.from_backend(DOVECOT) == [ToClient(greeting)]
    assert r.ready


def test_relay_refused_greeting_stops_with_nothing_after_it() -> None:
    r = _relay()
    assert r.from_backend(b"* BYE no\r\n") == [Stop(Reason.BACKEND_REFUSED, "* BYE no")]
    assert not r.ready
    assert r.from_backend(DOVECOT) == []
    assert r.backend_closed() == []


def test_relay_without_login_passes_client_bytes_unread() -> None:
    r = _relay(login=False)
    r.from_backend(DOVECOT)
    line = b"t1 AUTHENTICATE EXTERNAL =\r\n"
    assert r.from_client(line) == [ToBackend(line)]
    assert r.from_backend(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n") == [ToClient(b"* CAPABILITY IMAP4rev1\r\n")]


def test_relay_login_outcome_follows_the_bytes_it_came_with_then_the_dialog_is_dropped() -> None:
    r = _relay()
    r.from_backend(DOVECOT)
    assert r.from_client(b"t1 AUTHENTICATE EXTERNAL =\r\n") == [
        ToBackend(b"t1 AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")]
    assert r.from_backend(b"* CAPABILITY IMAP4rev1\r\nt1 OK Logged in\r\n") == [
        ToClient(b"* CAPABILITY IMAP4rev1 AUTH=EXTERNAL\r\nt1 OK Logged in\r\n"),
        Notice("auth", {"mechanism": "EXTERNAL", "mailbox": "alice@example.test", "result": "ok"})]
    # Logged in with nothing held: the login dialog and the filter's link to it are gone (a session may
    # idle for hours; it keeps no parser state it no longer needs).
    assert r._auth is None and r._filter._auth is None
    assert r.from_client(b"t2 AUTHENTICATE EXTERNAL =\r\n") == [ToBackend(b"t2 AUTHENTICATE EXTERNAL =\r\n")]
    assert r.from_backend(b"* CAPABILITY IMAP4rev1\r\n") == [ToClient(b"* CAPABILITY IMAP4rev1\r\n")]


def test_relay_keeps_the_dialog_while_client_bytes_are_held() -> None:
    r = _relay()
    r.from_backend(DOVECOT)
    r.from_client(b"t1 AUTHENTICATE EXTERNAL =\r\nt2 APPEND INBOX {5}\r\nab")
    out = r.from_backend(b"t1 OK Logged in\r\n")
    assert out[-1] == Notice("auth", {"mechanism": "EXTERNAL", "mailbox": "alice@example.test", "result": "ok"})
    assert r._auth is not None                      # three literal bytes still to pass: not done
    assert r.from_client(b"cde)\r\n") == [ToBackend(b"cde)\r\n")]
    r.from_backend(b"t2 OK appended\r\n")
    assert r._auth is None


def test_relay_backend_refusal_is_a_notice_after_the_bytes() -> None:
    r = _relay()
    r.from_backend(DOVECOT)
    r.from_client(b"t1 AUTHENTICATE EXTERNAL =\r\n")
    assert r.from_backend(b"t1 NO [AUTHENTICATIONFAILED] no\r\n") == [
        ToClient(b"t1 NO [AUTHENTICATIONFAILED] no\r\n"),
        Notice("auth", {"mechanism": "EXTERNAL", "mailbox": "alice@example.test", "result": "backend_refused",
                        "detail": "[AUTHENTICATIONFAILED] no"})]
    assert r._auth is not None


@pytest.mark.parametrize(("stream", "owed"), [
    (b"", False), (DOVECOT, True), (DOVECOT + b"* BYE bye\r\n", False), (DOVECOT + b"* 1 EXI", False)])
def test_relay_owes_the_client_a_bye_only_between_responses(stream: bytes, owed: bool) -> None:
    r = _relay()
    r.from_backend(stream)
    assert r.backend_closed() == ([ToClient(b"* BYE [UNAVAILABLE] Backend closed the connection\r\n")] if owed else [])


def test_relay_buffers_a_backend_line_of_64_kib_and_no_more() -> None:
    """The default bound (Dovecot's own line limit is 64 KiB): a greeting of 65,536 bytes is read, one more
    byte and it is refused (a greeting cannot be passed on in parts: it has to be checked whole)."""
    fits = b"* OK " + b"x" * (65536 - 7) + b"\r\n"
    assert len(fits) == 65536
    r = _relay()
    assert r.from_backend(fits) == [] and r.ready
    over = b"* OK " + b"x" * (65537 - 7) + b"\r\n"
    assert _relay().from_backend(over) == [Stop(Reason.BACKEND_PROTOCOL, "greeting too long")]


# -- what mutation testing of imap_relay.py found untested (issue 11) -------------------------------------
def test_filter_and_relay_keep_no_per_instance_dict() -> None:
    """One of each per IMAP session, which may idle for hours: slots, no __dict__."""
    assert not hasattr(ImapBackendFilter(), "__dict__")
    assert not hasattr(_relay(), "__dict__")


def test_backend_bye_is_passed_on() -> None:
    f = ImapBackendFilter()
    f.receive_data(GREETING)
    assert f.receive_data(b"* BYE Server shutting down.\r\n") == [ToClient(b"* BYE Server shutting down.\r\n")]
    assert not f.owes_goodbye()


def test_literal_split_across_reads_keeps_its_count() -> None:
    """A literal announced and begun in one read, ended in the next: its remaining bytes, lines or not, are
    still literal data (passed untouched), and what follows it is read as lines again."""
    inner = b"a\r\n* CAPABILITY STARTTLS\r\n"
    f = ImapBackendFilter()
    f.receive_data(GREETING)
    head = b"* 1 FETCH (BODY[] {" + str(2 + len(inner)).encode() + b"}\r\n"
    assert f.receive_data(head + b"xy") == [ToClient(head + b"xy")]
    assert f.receive_data(inner + b")\r\n* CAPABILITY STARTTLS\r\n") == [
        ToClient(inner + b")\r\n* CAPABILITY\r\n")]


def test_an_over_long_line_ends_at_its_lf_in_a_later_read() -> None:
    """An over-long line passed on in parts ends exactly at its LF, wherever that LF falls in a read: the
    next line is read whole (and filtered), not one byte of it swallowed, not passed with the long line."""
    f = ImapBackendFilter(max_line=100)
    f.receive_data(SHORT_GREETING)
    f.receive_data(b"* 1 FETCH (X " + b"x" * 150)
    assert f.receive_data(b"yy\r\n* CAPABILITY STARTTLS\r\n") == [ToClient(b"yy\r\n* CAPABILITY\r\n")]
    f.receive_data(b"* 2 FETCH (X " + b"x" * 150)
    assert f.receive_data(b"\n* CAPABILITY STARTTLS\r\n") == [ToClient(b"\n* CAPABILITY\r\n")]


def test_a_literal_announced_at_the_end_of_an_over_long_line_is_followed_by_its_continuation() -> None:
    """After the literal, the rest of the response is passed untouched (it is not a new response line)."""
    f = ImapBackendFilter(max_line=100)
    f.receive_data(SHORT_GREETING)
    f.receive_data(b"* 1 FETCH (BODY[] " + b"x" * 150)
    rest = b" {2}\r\nab* CAPABILITY STARTTLS\r\n"
    assert f.receive_data(rest) == [ToClient(rest)]
    assert f.receive_data(b"* CAPABILITY STARTTLS\r\n") == [ToClient(b"* CAPABILITY\r\n")]


def test_an_unterminated_line_of_max_line_bytes_is_held_one_more_is_passed_on() -> None:
    f = ImapBackendFilter(max_line=64)
    f.receive_data(SHORT_GREETING)
    held = b"* 1 FETCH (" + b"x" * 53
    assert len(held) == 64
    assert f.receive_data(held) == []
    assert f.receive_data(b"x") == [ToClient(held + b"x")]


def test_an_over_long_line_is_classified_by_its_first_64_bytes() -> None:
    """A line too long to buffer is classified by its head (64 bytes): a status response whose status word
    ends inside them is free text, so a "{n}" at its end announces nothing; one whose tag pushes the word
    past them is taken for a response announcing a literal (a client choosing a 61-byte tag only confuses
    its own session: those bytes pass untouched, as literal data always does)."""
    for tag, literal in ((b"t" * 60, False), (b"t" * 61, True)):
        f = ImapBackendFilter(max_line=100)
        f.receive_data(SHORT_GREETING)
        f.receive_data(tag + b" OK " + b"x" * 150)
        f.receive_data(b" {5}\r\n")
        caps = b"* CAPABILITY STARTTLS\r\n"
        assert f.receive_data(caps) == [ToClient(caps if literal else b"* CAPABILITY\r\n")], tag


def _filter_by_regex_only(line: bytes, add: bytes = b"") -> bytes:
    """filter_capabilities without its quick refusal: the two regexes alone decide."""
    from sniproxy.proto import imap_relay as r

    if r._UNTAGGED_CAP.match(line):
        body = r.strip_eol(line)
        kept = r._drop_atoms(body[len(b"* CAPABILITY"):], add)
        return line if kept is None else line[:len(b"* CAPABILITY")] + kept + line[len(body):]
    m = r._CAP_CODE.match(line)
    if m:
        kept = r._drop_atoms(m.group(2), add)
        return line if kept is None else m.group(1) + kept + line[m.end(2):]
    return line


@pytest.mark.parametrize("line", [
    b"* capability imap4rev1 starttls\r\n", b"* CaPaBiLiTy STARTTLS\n", b"* CAPABILITY\r\n",
    b"a1 ok [capability IMAP4rev1 LOGINDISABLED] done\r\n", b"* OK [CAPABILITY STARTTLS] hi\r\n",
    b"* 1 FETCH (BODY[] {5}\r\n", b"a1 OK [READ-WRITE] SELECT\r\n", b"* CAPABILIT\r\n", b"* \r\n", b"",
    b"* 3 EXISTS\r\n", b"a2 NO [CAPABILITY STARTTLS\r\n",
])
@pytest.mark.parametrize("add", [b"", b"AUTH=EXTERNAL"])
def test_the_quick_refusal_changes_no_line(line: bytes, add: bytes) -> None:
    assert filter_capabilities(line, add) == _filter_by_regex_only(line, add)


@given(st.binary(max_size=80), st.sampled_from([b"", b"AUTH=EXTERNAL"]))
def test_the_quick_refusal_changes_no_line_property(line: bytes, add: bytes) -> None:
    assert filter_capabilities(line, add) == _filter_by_regex_only(line, add)


@pytest.mark.parametrize("announce", [b"* 1 FETCH (BODY[] {5}\r\n", b"* 1 FETCH (BODY[] {5}\n",
                                      b"* 1 FETCH (BODY[] {5+}\r\n"])
def test_a_literal_is_seen_whatever_the_line_ending(announce: bytes) -> None:
    f = ImapBackendFilter(consume_greeting=True)
    f.receive_data(b"* OK ready\r\n")
    # the literal holds what would otherwise be read as a BYE and a capability line
    out = f.receive_data(announce + b"* BYE" + b")\r\n* CAPABILITY STARTTLS\r\n")
    assert out == [ToClient(announce + b"* BYE)\r\n* CAPABILITY\r\n")]
    assert f.owes_goodbye()


# --- issue 16's fast paths (mutation survivors of the re-run at 407b38a) ---------------------------

CAP_LINE = b"* CAPABILITY IMAP4rev1 STARTTLS IDLE\r\n"
CAP_FILTERED = b"* CAPABILITY IMAP4rev1 IDLE\r\n"


def test_a_literal_announced_with_a_bare_lf_passes_untouched() -> None:
    """``{n}`` then a bare LF announces a literal too: its bytes (here a CAPABILITY-looking line) are not
    filtered, and the line after the literal is (kills ``b'}\\n'`` -> ``b'XX}\\n'`` in _LITERAL_ENDINGS)."""
    data = b"* 1 FETCH (BODY[] {%d}\n" % len(CAP_LINE) + CAP_LINE + b")\r\n" + CAP_LINE
    sent, other = both(ImapBackendFilter, GREETING + data)
    assert sent == b"* 1 FETCH (BODY[] {%d}\n" % len(CAP_LINE) + CAP_LINE + b")\r\n" + CAP_FILTERED
    assert other == []


def test_a_line_of_exactly_max_line_bytes_is_still_filtered() -> None:
    """``max_line`` bytes is within the limit: the line is parsed, STARTTLS hidden (kills ``>`` -> ``>=``)."""
    line = b"* CAPABILITY IMAP4rev1 STARTTLS " + b"X" * 20 + b"\r\n"
    sent, other = both(ImapBackendFilter, b"* OK ready\r\n" + line, max_line=len(line))
    assert sent == line.replace(b" STARTTLS", b"") and other == []


def test_the_line_ending_a_literal_response_ends_the_continuation() -> None:
    """After ``{n}`` + literal + ``)``, the next line is a new response and is filtered again (kills the
    deleted ``self._continued = False`` of the no-literal fast path in _end_of_line)."""
    data = b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n" + CAP_LINE
    sent, _ = both(ImapBackendFilter, GREETING + data)
    assert sent == b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n" + CAP_FILTERED


def test_a_line_ending_in_braces_that_are_no_literal_ends_the_continuation() -> None:
    """A continuation line ending in ``{...}`` CRLF that is no literal (not digits) ends the response too: the
    next line is filtered again (kills the deleted ``self._continued = False`` of _end_of_line's else branch)."""
    data = b"* 1 FETCH (BODY[] {3}\r\nabc X-LABELS {not-a-literal}\r\n" + CAP_LINE
    sent, other = both(ImapBackendFilter, GREETING + data)
    assert sent == b"* 1 FETCH (BODY[] {3}\r\nabc X-LABELS {not-a-literal}\r\n" + CAP_FILTERED
    assert other == []
