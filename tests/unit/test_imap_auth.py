"""Proxy-side IMAP SASL EXTERNAL (``ImapExternal``) and the AUTH=EXTERNAL capability filter, without sockets."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.auth.login import LoginDecision, LoginRule, decide
from sniproxy.errors import Reason
from sniproxy.proto.imap import ImapBackendFilter, filter_capabilities
from sniproxy.proto.imap_auth import ImapExternal
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
