"""Proxy-side IMAP SASL EXTERNAL (``ImapExternal``) and the AUTH=EXTERNAL capability filter, without sockets."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.auth.login import LoginDecision, LoginRule, decide
from sniproxy.errors import Reason
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.imap_relay import ImapBackendFilter, filter_capabilities
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient

RULE = LoginRule(mapping={"810001234567": ("alice@example.test", "cabinet@example.test")})
CARD = {"idnat_ps": "810001234567"}


def _auth(identity: dict[str, str] | None = None) -> ImapExternal:
    ident = CARD if identity is None else identity
    return ImapExternal(decide=lambda authzid: decide(RULE, ident, authzid), master_user="proxy-master",
                        master_password="pw")


def _plain(authzid: str) -> bytes:
    return base64.b64encode(f"{authzid}\0proxy-master\0pw".encode())


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_continuation_form_with_authzid() -> None:
    a = _auth()
    assert a.client_data(b"t1 AUTHENTICATE EXTERNAL\r\n") == [ToClient(b"+ \r\n")]
    assert a.client_data(_b64("cabinet@example.test") + b"\r\n") == [
        ToBackend(b"t1 AUTHENTICATE PLAIN " + _plain("cabinet@example.test") + b"\r\n")]


@pytest.mark.parametrize("ir", [b"=", _b64("ALICE@example.test")])
def test_sasl_ir_form(ir: bytes) -> None:
    (out,) = _auth().client_data(b"t1 authenticate external " + ir + b"\r\n")
    assert out == ToBackend(b"t1 AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")


def test_empty_continuation_response_means_default_mailbox() -> None:
    a = _auth()
    a.client_data(b"t1 AUTHENTICATE EXTERNAL\r\n")
    (out,) = a.client_data(b"\r\n")
    assert out == ToBackend(b"t1 AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")


@pytest.mark.parametrize(("identity", "authzid", "reason"), [
    (CARD, "bob@example.test", "authzid_not_allowed"),
    ({"idnat_ps": "899999999999"}, "", "not_mapped"),
    ({}, "", "not_mapped"),
])
def test_refusal_never_reaches_the_backend(identity: dict[str, str], authzid: str, reason: str) -> None:
    a = _auth(identity)
    out = a.client_data(b"t1 AUTHENTICATE EXTERNAL " + (_b64(authzid) if authzid else b"=") + b"\r\n")
    assert out[0] == ToClient(b"t1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
    assert isinstance(out[1], Notice) and out[1].fields["result"] == reason
    assert not any(isinstance(x, ToBackend) for x in out)
    assert "pw" not in repr(out)


def test_cancel_and_bad_base64() -> None:
    a = _auth()
    a.client_data(b"t1 AUTHENTICATE EXTERNAL\r\n")
    assert a.client_data(b"*\r\n") == [ToClient(b"t1 BAD Authentication canceled\r\n")]
    out = a.client_data(b"t2 AUTHENTICATE EXTERNAL !!!\r\n")
    assert out[0] == ToClient(b"t2 BAD Invalid base64 response\r\n")
    assert isinstance(out[1], Notice) and out[1].fields["result"] == "malformed"


def test_other_commands_and_literals_pass_through_unparsed() -> None:
    a = _auth()
    # a LOGIN with a literal whose bytes look like our command: never interpreted
    data = b"t1 CAPABILITY\r\nt2 LOGIN {29}\r\nt3 AUTHENTICATE EXTERNAL =\r\n alicepw\r\n"
    assert a.client_data(data) == [ToBackend(data)]


def test_byte_by_byte_same_result() -> None:
    a = _auth()
    out: list[RelayAction] = []
    for b in b"t0 NOOP\r\nt1 AUTHENTICATE EXTERNAL =\r\n":
        out += a.client_data(bytes([b]))
    assert b"".join(x.data for x in out if isinstance(x, ToBackend)) == (
        b"t0 NOOP\r\nt1 AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")


def test_long_line_before_login_stops() -> None:
    a = ImapExternal(decide=lambda z: LoginDecision(None, "x"), master_user="m", master_password="p", max_line=100)
    out = a.client_data(b"t1 " + b"x" * 200)
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.LINE_TOO_LONG


def test_backend_answer_ends_parsing_and_capability_injection() -> None:
    a = _auth()
    f = ImapBackendFilter(consume_greeting=False, auth=a)
    (greeting,) = f.receive_data(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN STARTTLS] ready\r\n")
    assert greeting.data == b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=EXTERNAL] ready\r\n"  # type: ignore[union-attr]
    a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\n")
    f.receive_data(b"t1 OK Logged in\r\n")
    assert a.logged_in
    assert a.take_notices() == [Notice("auth", {"mechanism": "EXTERNAL", "mailbox": "alice@example.test",
                                                "result": "ok"})]
    (caps,) = f.receive_data(b"* CAPABILITY IMAP4rev1 IDLE\r\n")
    assert caps.data == b"* CAPABILITY IMAP4rev1 IDLE\r\n"  # type: ignore[union-attr]
    # after login the stream is not parsed at all
    assert a.client_data(b"t9 AUTHENTICATE EXTERNAL =\r\n") == [ToBackend(b"t9 AUTHENTICATE EXTERNAL =\r\n")]


def test_backend_refusal_is_reported_and_parsing_goes_on() -> None:
    a = _auth()
    a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\n")
    a.backend_line(b"t1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    (notice,) = a.take_notices()
    assert isinstance(notice, Notice) and notice.fields["result"] == "backend_refused"
    assert not a.logged_in
    a.client_data(b"t2 LOGIN alice pw\r\n")
    a.backend_line(b"t2 OK Logged in\r\n")
    assert a.logged_in and a.take_notices() == []   # the client's own login: nothing to report


def test_filter_capabilities_adds_once() -> None:
    assert filter_capabilities(b"* CAPABILITY IMAP4rev1 AUTH=external\r\n", b"AUTH=EXTERNAL") == (
        b"* CAPABILITY IMAP4rev1 AUTH=external\r\n")
    assert filter_capabilities(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n", b"AUTH=EXTERNAL") == (
        b"* CAPABILITY IMAP4rev1 AUTH=EXTERNAL\r\n")
    assert filter_capabilities(b"a OK [CAPABILITY IMAP4rev1] x\r\n", b"AUTH=EXTERNAL") == (
        b"a OK [CAPABILITY IMAP4rev1 AUTH=EXTERNAL] x\r\n")
    assert filter_capabilities(b"* 1 FETCH (FLAGS ())\r\n", b"AUTH=EXTERNAL") == b"* 1 FETCH (FLAGS ())\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_never_crashes_and_stays_bounded(chunks: list[bytes]) -> None:
    a = ImapExternal(decide=lambda z: decide(RULE, CARD, z), master_user="m", master_password="p", max_line=512)
    for chunk in chunks:
        out = a.client_data(chunk)
        if out and isinstance(out[-1], Stop):
            return
        assert len(a._buf) <= 512 + 300


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_chunking_does_not_change_what_the_backend_gets(data: bytes, step: int) -> None:
    whole = ImapExternal(decide=lambda z: decide(RULE, CARD, z), master_user="m", master_password="p")
    split = ImapExternal(decide=lambda z: decide(RULE, CARD, z), master_user="m", master_password="p")
    one = whole.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\n" + data)
    many: list[RelayAction] = []
    full = b"t1 AUTHENTICATE EXTERNAL =\r\n" + data
    for i in range(0, len(full), step):
        many += split.client_data(full[i:i + step])
    assert b"".join(x.data for x in one if isinstance(x, ToBackend)) == b"".join(
        x.data for x in many if isinstance(x, ToBackend))


# -- what the review of the identity merge found ---------------------------------------------------------
def _backend_got(out: list[RelayAction]) -> bytes:
    return b"".join(x.data for x in out if isinstance(x, ToBackend))


def test_a_pipelined_external_inside_the_clients_own_sasl_exchange_is_a_sasl_response() -> None:
    """Dovecot reads the line after "a AUTHENTICATE PLAIN" as its SASL response: so must the proxy."""
    a = _auth()
    out = a.client_data(b"a AUTHENTICATE PLAIN\r\nxyz AUTHENTICATE EXTERNAL =\r\n")
    assert _backend_got(out) == b"a AUTHENTICATE PLAIN\r\nxyz AUTHENTICATE EXTERNAL =\r\n"
    assert _plain("alice@example.test") not in _backend_got(out)   # the master login was never sent
    a.backend_line(b"a BAD Invalid base64\r\n")
    (ext,) = a.client_data(b"t2 AUTHENTICATE EXTERNAL =\r\n")   # after the answer, EXTERNAL works again
    assert ext == ToBackend(b"t2 AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")


def test_the_rest_of_a_command_after_its_literal_is_not_a_new_command() -> None:
    a = _auth()
    out = a.client_data(b"a LOGIN {1+}\r\nux AUTHENTICATE EXTERNAL =\r\n")
    assert _backend_got(out) == b"a LOGIN {1+}\r\nux AUTHENTICATE EXTERNAL =\r\n"
    assert not any(isinstance(x, ToClient) for x in out)


def test_external_while_a_client_login_is_unanswered_is_refused() -> None:
    a = _auth()
    a.client_data(b"a LOGIN alice pw\r\n")
    out = a.client_data(b"b AUTHENTICATE EXTERNAL =\r\n")
    assert out == [ToClient(b"b BAD Another login is in progress\r\n")]


def test_a_reused_tag_cannot_pair_a_login_with_another_answer() -> None:
    a = _auth()
    a.client_data(b"a NOOP\r\n")
    assert a.client_data(b"a LOGIN x y\r\n") == [ToClient(b"a BAD Tag already in use\r\n")]
    a.backend_line(b"a OK NOOP completed\r\n")
    assert not a.logged_in and a.extra_caps == b"AUTH=EXTERNAL"


def test_commands_pipelined_before_login_are_bounded() -> None:
    from sniproxy.proto.imap_auth import MAX_INFLIGHT

    a = _auth()
    out = a.client_data(b"".join(b"t%d NOOP\r\n" % i for i in range(MAX_INFLIGHT + 1)))
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.CLIENT_PROTOCOL


def test_a_refused_authzid_is_logged_without_control_characters() -> None:
    (_, notice) = _auth().client_data(b"t1 AUTHENTICATE EXTERNAL " + _b64("bob\x1b[31m@example.test") + b"\r\n")
    assert isinstance(notice, Notice) and "\x1b" not in notice.fields["authzid"]


# -- what mutation testing of imap_auth.py found untested (issue 11) --------------------------------------
def _refusing(decision: LoginDecision, *, user: str = "m", max_line: int = 65536) -> ImapExternal:
    """A dialog whose login rule always answers ``decision``."""
    return ImapExternal(decide=lambda z: decision, master_user=user, master_password="p", max_line=max_line)


@pytest.mark.parametrize("tag", [b"a(", b"a)", b"a{", b"a%", b"a*", b'a"', b"a\\", b"a+"])
def test_a_tag_with_a_forbidden_character_is_not_a_tag(tag: bytes) -> None:
    """RFC 9051 tag = 1*<ASTRING-CHAR except "+">: such a line is passed on unread, never tracked."""
    a = _auth()
    data = tag + b" NOOP\r\n" + tag + b" NOOP\r\n" + tag + b" AUTHENTICATE EXTERNAL =\r\n"
    assert a.client_data(data) == [ToBackend(data)]


def test_a_tag_with_letters_outside_the_forbidden_set_is_tracked() -> None:
    a = _auth()
    assert a.client_data(b"X1 NOOP\r\n") == [ToBackend(b"X1 NOOP\r\n")]
    assert a.client_data(b"X1 LOGIN u p\r\n") == [ToClient(b"X1 BAD Tag already in use\r\n")]


def test_an_answered_tag_can_be_used_again() -> None:
    a = _auth()
    a.client_data(b"a NOOP\r\n")
    a.backend_line(b"a OK NOOP completed\r\n")
    assert a.client_data(b"a NOOP\r\n") == [ToBackend(b"a NOOP\r\n")]


def test_the_default_line_limit_is_64_kib() -> None:
    a = _auth()
    line = b"t1 NOOP " + b"x" * (65536 - 10) + b"\r\n"
    assert len(line) == 65536 and a.client_data(line) == [ToBackend(line)]
    out = _auth().client_data(b"t1 NOOP " + b"x" * (65537 - 10) + b"\r\n")
    assert len(out) == 1 and isinstance(out[0], Stop) and out[0].reason is Reason.LINE_TOO_LONG


def test_exactly_256_pipelined_commands_are_allowed() -> None:
    a = _auth()
    noops = b"".join(b"t%d NOOP\r\n" % i for i in range(256))
    assert a.client_data(noops) == [ToBackend(noops)]
    (stop,) = a.client_data(b"t256 NOOP\r\n")
    assert isinstance(stop, Stop) and stop.reason is Reason.CLIENT_PROTOCOL


def test_the_commands_before_the_257th_still_reach_the_backend() -> None:
    noops = b"".join(b"t%d NOOP\r\n" % i for i in range(256))
    out = _auth().client_data(noops + b"t256 NOOP\r\n")
    assert out[0] == ToBackend(noops)
    assert len(out) == 2 and isinstance(out[1], Stop) and out[1].reason is Reason.CLIENT_PROTOCOL


def test_our_own_login_counts_among_the_pipelined_commands() -> None:
    a = _auth()
    a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\n")
    noops = b"".join(b"n%d NOOP\r\n" % i for i in range(255))
    assert a.client_data(noops) == [ToBackend(noops)]
    (stop,) = a.client_data(b"n255 NOOP\r\n")
    assert isinstance(stop, Stop) and stop.reason is Reason.CLIENT_PROTOCOL


def test_the_backend_refusal_notice_carries_the_backends_text() -> None:
    a = _auth()
    a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\n")
    a.backend_line(b"t1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert a.take_notices() == [Notice("auth", {
        "mechanism": "EXTERNAL", "mailbox": "alice@example.test", "result": "backend_refused",
        "detail": "[AUTHENTICATIONFAILED] Authentication failed."})]
    assert a.take_notices() == []


def test_done_only_once_logged_in_with_nothing_held() -> None:
    a = _auth()
    assert not a.done
    a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\nt2 SEL")   # half a line held
    a.backend_line(b"t1 OK Logged in\r\n")
    assert a.logged_in and not a.done
    # the held half goes out with the rest of its line, unparsed
    assert a.client_data(b"ECT inbox\r\n") == [ToBackend(b"t2 SELECT inbox\r\n")]
    assert a.done


def test_a_literal_still_pending_at_login_is_counted_down() -> None:
    a = _auth()
    out = a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\nt2 APPEND box {10}\r\nabc")
    assert _backend_got(out).endswith(b"t2 APPEND box {10}\r\nabc")
    a.backend_line(b"t1 OK Logged in\r\n")
    assert not a.done                       # 7 literal bytes still to come
    assert a.client_data(b"defghij\r\nt3 NOOP\r\n") == [ToBackend(b"defghij\r\nt3 NOOP\r\n")]
    assert a.done


def test_commands_after_a_literal_and_its_line_are_read_again() -> None:
    a = _auth()
    out = a.client_data(b"a APPEND box {3}\r\nabc\r\nb AUTHENTICATE EXTERNAL =\r\n")
    assert out == [ToBackend(b"a APPEND box {3}\r\nabc\r\n"),
                   ToBackend(b"b AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")]


def test_a_bare_newline_line_passes_and_the_next_command_is_read() -> None:
    out = _auth().client_data(b"\nt1 AUTHENTICATE EXTERNAL =\r\n")
    assert out == [ToBackend(b"\n"), ToBackend(b"t1 AUTHENTICATE PLAIN " + _plain("alice@example.test") + b"\r\n")]


def test_an_unfinished_line_of_exactly_the_limit_waits() -> None:
    a = _refusing(LoginDecision(None, "x"), max_line=100)
    assert a.client_data(b"x" * 100) == []
    (stop,) = a.client_data(b"x")
    assert isinstance(stop, Stop) and stop.reason is Reason.LINE_TOO_LONG


def test_a_complete_line_over_the_limit_stops_after_what_came_before() -> None:
    a = _refusing(LoginDecision(None, "x"), max_line=100)
    line = b"t1 NOOP " + b"x" * 90 + b"\r\n"
    assert len(line) == 100 and a.client_data(line) == [ToBackend(line)]
    out = a.client_data(b"t2 NOOP\r\nt3 NOOP " + b"x" * 91 + b"\r\n")
    assert out[0] == ToBackend(b"t2 NOOP\r\n")
    assert len(out) == 2 and isinstance(out[1], Stop) and out[1].reason is Reason.LINE_TOO_LONG


def test_an_unfinished_line_over_the_limit_stops_after_what_came_before() -> None:
    a = _refusing(LoginDecision(None, "x"), max_line=100)
    out = a.client_data(b"t0 NOOP\r\n" + b"x" * 200)
    assert out[0] == ToBackend(b"t0 NOOP\r\n")
    assert len(out) == 2 and isinstance(out[1], Stop) and out[1].reason is Reason.LINE_TOO_LONG


def test_authenticate_without_a_mechanism_is_the_clients_own() -> None:
    a = _auth()
    assert a.client_data(b"t1 AUTHENTICATE\r\n") == [ToBackend(b"t1 AUTHENTICATE\r\n")]
    # until its answer, the next line is a SASL response for the backend
    assert a.client_data(b"t2 AUTHENTICATE EXTERNAL =\r\n") == [ToBackend(b"t2 AUTHENTICATE EXTERNAL =\r\n")]


@pytest.mark.parametrize("extra", [b" x", b" x y"])
def test_external_with_more_than_one_response_is_a_syntax_error(extra: bytes) -> None:
    out = _auth().client_data(b"t1 AUTHENTICATE EXTERNAL =" + extra + b"\r\n")
    assert out == [ToClient(b"t1 BAD Syntax: AUTHENTICATE EXTERNAL [initial-response]\r\n")]


def test_the_malformed_response_notice() -> None:
    from sniproxy.auth.sasl import SaslError, decode_external

    with pytest.raises(SaslError) as exc:
        decode_external("!!!")
    out = _auth().client_data(b"t2 AUTHENTICATE EXTERNAL !!!\r\n")
    assert out == [ToClient(b"t2 BAD Invalid base64 response\r\n"),
                   Notice("auth", {"mechanism": "EXTERNAL", "result": "malformed", "detail": str(exc.value)})]


def test_the_refusal_notice() -> None:
    a = _refusing(LoginDecision(None, "authzid_not_allowed", "why"))
    out = a.client_data(b"t1 AUTHENTICATE EXTERNAL " + _b64("bob@example.test") + b"\r\n")
    assert out == [ToClient(b"t1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
                   Notice("auth", {"mechanism": "EXTERNAL", "result": "authzid_not_allowed",
                                   "authzid": "bob@example.test", "detail": "why"})]


def test_a_login_plain_cannot_carry_is_refused_and_never_sent() -> None:
    """A NUL in the master user (or mailbox) would split the PLAIN fields: refused, the backend sees nothing."""
    a = _refusing(LoginDecision("alice@example.test", "ok"), user="m\0x")
    out = a.client_data(b"t1 AUTHENTICATE EXTERNAL " + _b64("alice@example.test") + b"\r\n")
    assert out == [ToClient(b"t1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
                   Notice("auth", {"mechanism": "EXTERNAL", "result": "bad_mailbox",
                                   "authzid": "alice@example.test"})]
    # nothing was sent under that tag, so it is free again
    assert a.client_data(b"t1 NOOP\r\n") == [ToBackend(b"t1 NOOP\r\n")]


def test_a_line_held_at_login_is_not_read_as_a_command() -> None:
    """Once logged in, even the half line held from before is passed on unread: no second master login."""
    a = _auth()
    a.client_data(b"t1 AUTHENTICATE EXTERNAL =\r\nt2 AUTHENTICATE EXTER")
    a.backend_line(b"t1 OK Logged in\r\n")
    assert a.client_data(b"NAL =\r\n") == [ToBackend(b"t2 AUTHENTICATE EXTERNAL =\r\n")]
    assert a.done
