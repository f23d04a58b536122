"""``SmtpRelay``: the XCLIENT opening with the backend, client XCLIENT/XFORWARD refused, AUTH EXTERNAL as
XCLIENT LOGIN=, EHLO keyword rewriting, DATA end detection. Sans-IO, driven with the replies Postfix 3.7 gives."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniproxy.auth.login import LoginRule, decide
from sniproxy.errors import Reason
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient
from sniproxy.proto.smtp_relay import HOLD_MAX, SmtpRelay

POSTFIX_EHLO = (b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
                b"250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n"
                b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 CHUNKING\r\n")
RULE = LoginRule(mapping={"810001234567": ("alice@example.test",)})


def _to_backend(out: list[RelayAction]) -> bytes:
    return b"".join(x.data for x in out if isinstance(x, ToBackend))


def _to_client(out: list[RelayAction]) -> bytes:
    return b"".join(x.data for x in out if isinstance(x, ToClient))


def _ready(*, consume: bool = True, login: bool = True) -> SmtpRelay:
    r = SmtpRelay(client_addr=("192.0.2.7", 40000), helo="", hostname="frontsmtp.mssante.fr", consume_greeting=consume,
                  decide=(lambda z: decide(RULE, {"idnat_ps": "810001234567"}, z)) if login else None)
    assert _to_backend(r.from_backend(b"220 mx.example.test ESMTP test\r\n")) == b"EHLO frontsmtp.mssante.fr\r\n"
    assert _to_backend(r.from_backend(POSTFIX_EHLO)).startswith(b"XCLIENT ADDR=")
    out = r.from_backend(b"220 mx.example.test ESMTP test\r\n")
    assert r.ready
    assert _to_client(out) == (b"" if consume else b"220 mx.example.test ESMTP test\r\n")
    return r


def test_opening_dance_sends_the_client_address() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 40000), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx ESMTP\r\n")
    assert _to_backend(r.from_backend(POSTFIX_EHLO)) == (
        b"XCLIENT ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP HELO=[UNAVAILABLE] NAME=[UNAVAILABLE]\r\n")
    assert not r.ready


def test_ipv6_client_address_form() -> None:
    r = SmtpRelay(client_addr=("2001:db8::7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx ESMTP\r\n")
    assert b"ADDR=IPV6:2001:db8::7 " in _to_backend(r.from_backend(POSTFIX_EHLO))


def test_backend_without_xclient_is_a_backend_error() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx ESMTP\r\n")
    (stop,) = r.from_backend(b"250-mx\r\n250 PIPELINING\r\n")
    assert isinstance(stop, Stop) and stop.reason is Reason.BACKEND_PROTOCOL


def test_implicit_tls_passes_the_new_greeting() -> None:
    _ready(consume=False)


def test_ehlo_hides_keywords_and_adds_auth_external() -> None:
    r = _ready()
    assert _to_backend(r.from_client(b"EHLO client.test\r\n")) == b"EHLO client.test\r\n"
    text = _to_client(r.from_backend(POSTFIX_EHLO))
    assert b"XCLIENT" not in text and b"CHUNKING" not in text and b"STARTTLS" not in text
    assert text.endswith(b"250 AUTH EXTERNAL\r\n") and text.count(b"250 ") == 1


@pytest.mark.parametrize("verb", [b"XCLIENT", b"xforward"])
def test_client_identity_commands_refused(verb: bytes) -> None:
    r = _ready()
    out = r.from_client(verb + b" ADDR=10.9.9.9 LOGIN=bob\r\n")
    assert _to_backend(out) == b""
    assert _to_client(out).startswith(b"550 5.7.0 ")
    assert any(isinstance(x, Notice) and x.event == "client_identity_refused" for x in out)
    # The log field names the command as the client spelt it, upper-cased (the operator greps for it).
    assert [x.fields for x in out if isinstance(x, Notice)] == [{"command": verb.upper().decode()}]


def test_auth_external_becomes_xclient_login_then_ehlo_then_235() -> None:
    r = _ready()
    r.from_client(b"EHLO client.test\r\n")
    r.from_backend(POSTFIX_EHLO)
    out = r.from_client(b"AUTH EXTERNAL " + base64.b64encode(b"alice@example.test") + b"\r\n")
    assert _to_backend(out) == b"XCLIENT LOGIN=alice@example.test\r\n"
    # held while the backend decides: nothing of the next command goes through yet
    assert r.from_client(b"MAIL FROM:<alice@example.test>\r\n") == []
    assert _to_backend(r.from_backend(b"220 mx ESMTP\r\n")) == b"EHLO client.test\r\n"
    out = r.from_backend(POSTFIX_EHLO)
    assert _to_client(out) == b"235 2.7.0 Authentication successful\r\n"
    assert _to_backend(out) == b"MAIL FROM:<alice@example.test>\r\n"
    assert any(isinstance(x, Notice) and x.fields.get("result") == "ok" for x in out)
    # pipelined behind MAIL: refused, and the refusal waits for MAIL's reply (replies in order)
    assert r.from_client(b"AUTH EXTERNAL =\r\n") == []
    assert _to_client(r.from_backend(b"250 2.1.0 Ok\r\n")) == (
        b"250 2.1.0 Ok\r\n503 5.5.1 AUTH must not be pipelined\r\n")


def _ehlo(r: SmtpRelay) -> None:
    r.from_client(b"EHLO client.test\r\n")
    r.from_backend(POSTFIX_EHLO)


def test_auth_external_refused_with_535() -> None:
    r = _ready()
    _ehlo(r)
    out = r.from_client(b"AUTH EXTERNAL " + base64.b64encode(b"bob@example.test") + b"\r\n")
    assert _to_client(out) == b"535 5.7.8 Authentication credentials invalid\r\n" and _to_backend(out) == b""


def test_auth_external_continuation_and_cancel() -> None:
    r = _ready()
    _ehlo(r)
    assert _to_client(r.from_client(b"AUTH EXTERNAL\r\n")) == b"334 \r\n"
    assert _to_client(r.from_client(b"*\r\n")).startswith(b"501")
    r.from_client(b"AUTH EXTERNAL\r\n")
    assert _to_backend(r.from_client(b"=\r\n")) == b"XCLIENT LOGIN=alice@example.test\r\n"


def test_data_end_found_leniently_and_commands_inside_data_not_parsed() -> None:
    r = _ready(login=False)
    r.from_client(b"DATA\r\n")
    out = r.from_backend(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert _to_client(out).startswith(b"354")
    body = b"Subject: x\r\n\r\nXCLIENT ADDR=1.2.3.4\r\n..leading dot\r\n"
    sent = b""
    for i in range(len(body)):
        sent += _to_backend(r.from_client(body[i:i + 1]))
    sent += _to_backend(r.from_client(b".\nRSET\r\n"))
    # the LF-only end is taken as the end, as Postfix takes it, and sent as CRLF; then a command again
    assert sent == body + b".\r\nRSET\r\n"
    assert _to_client(r.from_backend(b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n")) == (
        b"250 2.0.0 Ok: queued\r\n250 2.0.0 Ok\r\n")


def test_bdat_refused_and_hold_is_bounded() -> None:
    r = _ready(login=False)
    assert _to_client(r.from_client(b"BDAT 10 LAST\r\n")).startswith(b"502")
    r.from_client(b"DATA\r\n")
    out = r.from_client(b"x" * (HOLD_MAX + 1))
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.CLIENT_PROTOCOL


def test_content_waits_for_whole_lines_without_looping() -> None:
    """``_content`` passes complete lines only: a lone "." must wait for its line end, not spin."""
    r = _ready(login=False)
    r.from_client(b"DATA\r\n")
    r.from_backend(b"354 go\r\n")
    assert _to_backend(r.from_client(b"line\r\n")) == b"line\r\n"
    assert r.from_client(b".") == []
    assert r.from_client(b"\r") == []
    assert _to_backend(r.from_client(b"\r\n")) == b".\r\n"          # ".\r\r\n" ends the data, sent as ".\r\n"


# -- what the review of the identity merge found: the proxy and Postfix must parse alike --------------
@pytest.mark.parametrize("line", [b"XCLIENT\tLOGIN=victim@x\r\n", b" XCLIENT LOGIN=victim@x\r\n",
                                  b"XFORWARD\tADDR=10.0.0.1\r\n", b"DATA\t\r\n", b"BDAT\t5 LAST\r\n",
                                  b"MAIL FROM:<a@x>\x00\r\n", b"RCPT TO:<a@x>\rXCLIENT LOGIN=v\r\n"])
def test_control_characters_and_leading_space_never_reach_the_backend(line: bytes) -> None:
    r = _ready()
    out = r.from_client(line)
    assert _to_backend(out) == b"" and _to_client(out).startswith((b"500", b"550"))


def test_unknown_verbs_are_not_forwarded() -> None:
    r = _ready()
    for line in (b"XUSR\r\n", b"XVERP\r\n", b"TURN\r\n"):
        out = r.from_client(line)
        assert _to_backend(out) == b"" and _to_client(out).startswith(b"502")
    assert _to_backend(r.from_client(b"noop  extra   spaces\r\n")) == b"noop  extra   spaces\r\n"


@pytest.mark.parametrize("end", [b".\r\r\n", b".\n", b".\r\r\r\n"])
def test_every_data_end_postfix_accepts_ends_it_here_too(end: bytes) -> None:
    r = _ready()
    r.from_client(b"DATA\r\n")
    r.from_backend(b"354 go\r\n")
    out = r.from_client(b"hello\r\n" + end + b"XCLIENT LOGIN=victim\r\n")
    assert _to_backend(out) == b"hello\r\n.\r\n"
    assert _to_client(out) == b""                      # the refusal waits for the reply to the data
    assert _to_client(r.from_backend(b"250 2.0.0 Ok: queued\r\n")) == (
        b"250 2.0.0 Ok: queued\r\n550 5.7.0 XCLIENT is not accepted from clients\r\n")


def test_bare_cr_inside_a_message_line_is_data() -> None:
    r = _ready(login=False)
    r.from_client(b"DATA\r\n")
    r.from_backend(b"354 go\r\n")
    assert _to_backend(r.from_client(b"a\rb\r\n.\rx\r\n.\r\n")) == b"a\rb\r\n.\rx\r\n.\r\n"


def test_a_long_message_line_is_passed_in_parts_and_its_crs_kept_for_the_line_end() -> None:
    from sniproxy.proto.smtp_relay import LONG_DATA_LINE

    r = _ready(login=False)
    r.from_client(b"DATA\r\n")
    r.from_backend(b"354 go\r\n")
    sent = _to_backend(r.from_client(b"x" * (LONG_DATA_LINE + 10) + b"\r\r"))
    assert sent == b"x" * (LONG_DATA_LINE + 10)
    assert _to_backend(r.from_client(b"\n.\r\n")) == b"\r\n.\r\n"


def test_a_client_auth_holds_what_follows_until_the_backend_answers() -> None:
    """Pipelined "AUTH PLAIN" then "*": Postfix reads "*" as the SASL answer; so must the proxy."""
    r = _ready(login=False)
    r.from_client(b"EHLO c\r\n")
    r.from_backend(POSTFIX_EHLO)
    out = r.from_client(b"AUTH PLAIN\r\n*\r\nXCLIENT LOGIN=victim\r\n")
    assert _to_backend(out) == b"AUTH PLAIN\r\n"
    out = r.from_backend(b"334 \r\n")
    assert _to_backend(out) == b"*\r\n"                      # the SASL answer, as Postfix reads it
    out = r.from_backend(b"501 5.7.0 Authentication aborted\r\n")
    assert _to_client(out) == b"501 5.7.0 Authentication aborted\r\n550 5.7.0 XCLIENT is not accepted from clients\r\n"
    assert b"XCLIENT" not in _to_backend(out)


def test_a_sasl_response_that_is_not_base64_is_sent_as_a_cancel() -> None:
    r = _ready(login=False)
    r.from_client(b"AUTH LOGIN\r\n")
    r.from_backend(b"334 VXNlcm5hbWU6\r\n")
    assert _to_backend(r.from_client(b"XCLIENT LOGIN=victim\r\n")) == b"*\r\n"


def test_auth_external_before_ehlo_is_refused() -> None:
    r = _ready()
    out = r.from_client(b"AUTH EXTERNAL =\r\n")
    assert _to_client(out).startswith(b"503") and _to_backend(out) == b""


def test_ehlo_refused_after_xclient_login_ends_the_session() -> None:
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL =\r\n")
    r.from_backend(b"220 mx ESMTP\r\n")
    out = r.from_backend(b"421 4.3.0 going away\r\n")
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.BACKEND_PROTOCOL
    assert b"235" not in _to_client(out)


def test_long_authzid_is_decoded_whole() -> None:
    seen: list[str] = []
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True,
                  decide=lambda z: (seen.append(z), decide(RULE, {"idnat_ps": "810001234567"}, z))[1])
    r.from_backend(b"220 mx\r\n")
    r.from_backend(POSTFIX_EHLO)
    r.from_backend(b"220 mx\r\n")
    _ehlo(r)
    authzid = "a" * 300 + "@example.test"
    r.from_client(b"AUTH EXTERNAL " + base64.b64encode(authzid.encode()) + b"\r\n")
    assert seen == [authzid]


def test_filter_only_mode_refuses_client_xclient_without_an_opening() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None,
                  xclient=False)
    assert r.from_backend(b"220 mx ESMTP\r\n") == [] and r.ready
    out = r.from_client(b"XCLIENT LOGIN=victim\r\nEHLO c\r\n")
    assert _to_client(out).startswith(b"550") and _to_backend(out) == b"EHLO c\r\n"
    assert b"AUTH EXTERNAL" not in _to_client(r.from_backend(POSTFIX_EHLO))


def test_a_non_ip_client_address_is_unavailable() -> None:
    r = SmtpRelay(client_addr=("/run/sock", 0), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx\r\n")
    assert b"ADDR=[UNAVAILABLE] " in _to_backend(r.from_backend(POSTFIX_EHLO))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=20), st.lists(st.sampled_from(
    [b"250 ok\r\n", b"354 go\r\n", b"220 mx\r\n", b"550 no\r\n", b"334 \r\n"]), max_size=20))
def test_never_crashes_never_loops(client: list[bytes], replies: list[bytes]) -> None:
    r = _ready()
    for i, chunk in enumerate(client):
        out = r.from_client(chunk)
        if out and isinstance(out[-1], Stop):
            return
        if i < len(replies):
            out = r.from_backend(replies[i])
            if out and isinstance(out[-1], Stop):
                return


# -- filter-only mode (identity none / proxy-v2): what the backend filter used to do ------------------------
def _filter(consume: bool = True) -> SmtpRelay:
    return SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=consume, decide=None,
                     xclient=False)


def test_filter_mode_consumes_a_multiline_greeting_and_hides_starttls() -> None:
    r = _filter()
    assert r.from_backend(b"220-backend.local hello\r\n") == [] and not r.ready
    assert r.from_backend(b"220 backend.local ESMTP\r\n") == [] and r.ready
    r.from_client(b"EHLO c\r\n")
    text = _to_client(r.from_backend(b"250-backend.local\r\n250-8BITMIME\r\n250 STARTTLS\r\n"))
    assert text == b"250-backend.local\r\n250 8BITMIME\r\n"          # separator fixed on the new last line


def test_filter_mode_passes_the_greeting_on_implicit_tls() -> None:
    r = _filter(consume=False)
    assert _to_client(r.from_backend(b"220-a\r\n220 b\r\n")) == b"220-a\r\n220 b\r\n" and r.ready


@pytest.mark.parametrize(("greeting", "reason"), [
    (b"554 5.3.2 backend.local Service unavailable\r\n", Reason.BACKEND_REFUSED),
    (b"421 4.3.2 shutting down\r\n", Reason.BACKEND_REFUSED),
    (b"* OK IMAP here\r\n", Reason.BACKEND_PROTOCOL),
])
def test_filter_mode_greeting_refused(greeting: bytes, reason: Reason) -> None:
    out = _filter().from_backend(greeting)
    assert len(out) == 1 and isinstance(out[0], Stop) and out[0].reason is reason


# -- mutation testing (issue 11): each test below fails against a mutant that survived the suite before ------
def _data(r: SmtpRelay) -> None:
    r.from_client(b"DATA\r\n")
    assert _to_client(r.from_backend(b"354 go\r\n")) == b"354 go\r\n"


def _refused_xclient_after_reply(r: SmtpRelay, out: list[RelayAction]) -> None:
    """The relay is in command mode: the pipelined XCLIENT is answered 550 here after the data's reply."""
    assert _to_client(out) == b""
    assert _to_client(r.from_backend(b"250 2.0.0 Ok: queued\r\n")) == (
        b"250 2.0.0 Ok: queued\r\n550 5.7.0 XCLIENT is not accepted from clients\r\n")


def test_empty_message_end_marker_first_in_a_read_ends_the_data() -> None:
    """The "." line as the very first bytes after 354 (an empty body): the data ends, and the client's next
    line is a command (filtered), never message data the backend would read with the proxy's trust."""
    r = _ready(login=False)
    _data(r)
    out = r.from_client(b".\r\nXCLIENT LOGIN=victim\r\n")
    assert _to_backend(out) == b".\r\n"
    _refused_xclient_after_reply(r, out)


def test_end_marker_first_in_a_later_read_ends_the_data() -> None:
    r = _ready(login=False)
    _data(r)
    assert _to_backend(r.from_client(b"body\r\n")) == b"body\r\n"
    out = r.from_client(b".\r\nXCLIENT LOGIN=victim\r\n")
    assert _to_backend(out) == b".\r\n"
    _refused_xclient_after_reply(r, out)


def test_a_dot_continuing_a_long_message_line_is_not_the_end() -> None:
    """After a message line over 64 KiB passed in parts, ".\\r\\n" ends that line ("xxx."): Postfix is still
    in the data, so the proxy must be too; the real end comes later and only then are commands parsed."""
    from sniproxy.proto.smtp_relay import LONG_DATA_LINE

    r = _ready(login=False)
    _data(r)
    long_line = b"x" * (LONG_DATA_LINE + 10)
    assert _to_backend(r.from_client(long_line)) == long_line
    out = r.from_client(b".\r\nRSET\r\n.\r\nXCLIENT LOGIN=victim\r\n")
    assert _to_backend(out) == b".\r\nRSET\r\n.\r\n"
    _refused_xclient_after_reply(r, out)


def test_long_line_then_its_end_then_the_marker_ends_the_data() -> None:
    from sniproxy.proto.smtp_relay import LONG_DATA_LINE

    r = _ready(login=False)
    _data(r)
    r.from_client(b"y" * (LONG_DATA_LINE + 1))
    assert _to_backend(r.from_client(b"\r\n")) == b"\r\n"
    out = r.from_client(b".\r\nXCLIENT LOGIN=victim\r\n")
    assert _to_backend(out) == b".\r\n"
    _refused_xclient_after_reply(r, out)


def test_a_message_line_at_the_long_line_limit_waits_for_its_end() -> None:
    from sniproxy.proto.smtp_relay import LONG_DATA_LINE

    r = _ready(login=False)
    _data(r)
    assert r.from_client(b"z" * LONG_DATA_LINE) == []               # not over the limit: held whole
    assert _to_backend(r.from_client(b"\r\n")) == b"z" * LONG_DATA_LINE + b"\r\n"


def test_postfix_refusing_xclient_stops_the_relay() -> None:
    """Without the XCLIENT the session would carry the proxy's own (trusted) address: never forward."""
    r = SmtpRelay(client_addr=("192.0.2.7", 40000), helo="", hostname="p", consume_greeting=False, decide=None)
    r.from_backend(b"220 mx ESMTP\r\n")
    r.from_backend(POSTFIX_EHLO)
    out = r.from_backend(b"550 5.7.0 Error: insufficient authorization\r\n")
    assert len(out) == 1 and isinstance(out[0], Stop) and out[0].reason is Reason.BACKEND_REFUSED
    assert "550" in out[0].detail
    assert not r.ready


def test_a_greeting_other_than_220_stops_the_xclient_opening() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    out = r.from_backend(b"554 5.3.2 go away\r\n")
    assert len(out) == 1 and isinstance(out[0], Stop) and out[0].reason is Reason.BACKEND_REFUSED
    assert not r.ready


def test_ehlo_refused_during_the_opening_is_a_backend_error() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx ESMTP\r\n")
    (stop,) = r.from_backend(b"502-mx\r\n502 XCLIENT\r\n")
    assert isinstance(stop, Stop) and stop.reason is Reason.BACKEND_PROTOCOL and not r.ready


def test_refused_xclient_login_is_never_235() -> None:
    r = _ready()
    _ehlo(r)
    assert _to_backend(r.from_client(b"AUTH EXTERNAL =\r\n")) == b"XCLIENT LOGIN=alice@example.test\r\n"
    out = r.from_backend(b"550 5.7.0 Error: insufficient authorization\r\n")
    assert _to_client(out) == b"454 4.7.0 Temporary authentication failure\r\n"
    assert _to_backend(out) == b""                                  # no EHLO: the login did not happen
    (notice,) = [x for x in out if isinstance(x, Notice)]
    assert notice.fields["result"] == "backend_refused" and notice.fields["mailbox"] == "alice@example.test"
    # back in command mode, not authenticated: a second try goes to the backend again
    assert _to_backend(r.from_client(b"AUTH EXTERNAL =\r\n")) == b"XCLIENT LOGIN=alice@example.test\r\n"


def test_a_second_auth_external_is_refused_after_a_login() -> None:
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL =\r\n")
    r.from_backend(b"220 mx ESMTP\r\n")
    assert _to_client(r.from_backend(POSTFIX_EHLO)) == b"235 2.7.0 Authentication successful\r\n"
    out = r.from_client(b"AUTH EXTERNAL =\r\n")
    assert _to_client(out) == b"503 5.5.1 Already authenticated\r\n" and _to_backend(out) == b""


def test_a_second_auth_external_is_refused_after_the_backends_own_auth() -> None:
    r = _ready()
    _ehlo(r)
    assert _to_backend(r.from_client(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")) == b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
    assert _to_client(r.from_backend(b"235 2.7.0 Authentication successful\r\n")).startswith(b"235")
    out = r.from_client(b"AUTH EXTERNAL =\r\n")
    assert _to_client(out) == b"503 5.5.1 Already authenticated\r\n" and _to_backend(out) == b""


def test_a_failed_backend_auth_does_not_authenticate() -> None:
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
    assert _to_client(r.from_backend(b"535 5.7.8 Error: authentication failed\r\n")).startswith(b"535")
    assert _to_backend(r.from_client(b"AUTH EXTERNAL =\r\n")) == b"XCLIENT LOGIN=alice@example.test\r\n"


@pytest.mark.parametrize("split", [False, True])
def test_an_over_long_command_line_stops_the_relay(split: bool) -> None:
    """A complete line over max_line in one read, or its start without a line end: refused, not forwarded."""
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None,
                  xclient=False, max_line=64)
    r.from_backend(b"220 mx ESMTP\r\n")
    line = b"NOOP " + b"a" * 58 + b"\r\n"                               # 65 bytes
    out = r.from_client(line[:-2] + b"aa") if split else r.from_client(line)
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.LINE_TOO_LONG
    assert _to_backend(out) == b""


def test_a_command_line_at_max_line_is_forwarded() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None,
                  xclient=False, max_line=64)
    r.from_backend(b"220 mx ESMTP\r\n")
    line = b"NOOP " + b"a" * 57 + b"\r\n"                               # 64 bytes
    assert r.from_client(line[:-1]) == []                               # 63 bytes, no line end: waits
    assert _to_backend(r.from_client(b"\n")) == line


# -- second round: survivors of the full mutation run of smtp_relay.py (docs/mutation.md) -----------------
def _notices(out: list[RelayAction]) -> list[tuple[str, dict[str, object]]]:
    return [(x.event, dict(x.fields)) for x in out if isinstance(x, Notice)]


def _logged_in(r: SmtpRelay) -> list[RelayAction]:
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL =\r\n")
    r.from_backend(b"220 mx ESMTP\r\n")
    return r.from_backend(POSTFIX_EHLO)


def test_auth_notices_name_every_field() -> None:
    assert _notices(_logged_in(_ready())) == [
        ("auth", {"mechanism": "EXTERNAL", "result": "ok", "mailbox": "alice@example.test"})]
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL =\r\n")
    assert _notices(r.from_backend(b"550 5.7.0 no\r\n")) == [
        ("auth", {"mechanism": "EXTERNAL", "result": "backend_refused", "mailbox": "alice@example.test",
                  "detail": "550 5.7.0 no"})]
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL =\r\n")
    r.from_backend(b"220 mx ESMTP\r\n")
    assert _notices(r.from_backend(b"421 4.3.0 bye\r\n")) == [
        ("auth", {"mechanism": "EXTERNAL", "result": "backend_refused", "mailbox": "alice@example.test",
                  "detail": "421 4.3.0 bye"})]
    r = _ready()
    _ehlo(r)
    out = r.from_client(b"AUTH EXTERNAL " + base64.b64encode(b"bob@example.test") + b"\r\n")
    (event, fields), = _notices(out)
    assert event == "auth" and fields["mechanism"] == "EXTERNAL" and fields["authzid"] == "bob@example.test"
    assert fields["result"] == "authzid_not_allowed" and set(fields) == {"mechanism", "result", "authzid", "detail"}


def test_a_malformed_external_response_is_501_and_logged() -> None:
    r = _ready()
    _ehlo(r)
    out = r.from_client(b"AUTH EXTERNAL !!notbase64\r\n")
    assert _to_client(out) == b"501 5.5.2 Cannot decode response\r\n" and _to_backend(out) == b""
    (event, fields), = _notices(out)
    assert event == "auth" and fields["mechanism"] == "EXTERNAL" and fields["result"] == "malformed"
    assert set(fields) == {"mechanism", "result", "detail"}


def test_non_ascii_external_responses_are_refused_not_crashing() -> None:
    r = _ready()
    _ehlo(r)
    assert _to_client(r.from_client(b"AUTH EXTERNAL \xc3\xa9\r\n")).startswith(b"501")
    assert _to_client(r.from_client(b"AUTH EXTERNAL\r\n")) == b"334 \r\n"
    assert _to_client(r.from_client(b"\xc3\xa9\r\n")).startswith(b"501")


def test_cancel_is_its_own_reply_and_returns_to_commands() -> None:
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL\r\n")
    assert _to_client(r.from_client(b"*\r\n")) == b"501 5.7.0 Authentication canceled\r\n"
    assert _to_backend(r.from_client(b"NOOP\r\n")) == b"NOOP\r\n"       # a command again, not a response


@pytest.mark.parametrize("line", [b"HELO c", b"MAIL FROM:<a@x>", b"RCPT TO:<b@x>", b"RSET", b"NOOP", b"QUIT",
                                  b"VRFY bob", b"HELP", b"EXPN list", b"ETRN example.test", b"AUTH PLAIN",
                                  b"AUTH", b"DATA", b"EHLO c"])
def test_every_submission_verb_is_forwarded(line: bytes) -> None:
    r = _ready(login=False)
    assert _to_backend(r.from_client(line + b"\r\n")) == line + b"\r\n"


def test_starttls_and_bdat_answered_here() -> None:
    r = _ready()
    out = r.from_client(b"STARTTLS\r\n")
    assert _to_client(out) == b"503 5.5.1 TLS already active\r\n" and _to_backend(out) == b""
    out = r.from_client(b"BDAT 5 LAST\r\n")
    assert _to_client(out) == b"502 5.5.1 BDAT is not available through this proxy, use DATA\r\n"


@pytest.mark.parametrize("line", [b" NOOP\r\n", b"\r\n", b"\n", b"NO\tOP\r\n"])
def test_leading_space_or_empty_line_is_a_syntax_error(line: bytes) -> None:
    r = _ready()
    out = r.from_client(line)
    assert _to_client(out) == b"500 5.5.2 Syntax error: control character or leading space in command\r\n"


def test_a_command_ending_in_x_is_passed_whole() -> None:
    r = _ready(login=False)
    assert _to_backend(r.from_client(b"EHLO ABCX\r\r\n")) == b"EHLO ABCX\r\n"


def test_helo_counts_as_ehlo_for_auth_external() -> None:
    r = _ready()
    r.from_client(b"HELO c\r\n")
    assert _to_client(r.from_backend(b"250 mx\r\n")).startswith(b"250")
    assert _to_backend(r.from_client(b"AUTH EXTERNAL =\r\n")) == b"XCLIENT LOGIN=alice@example.test\r\n"


def test_ehlo_rewrite_exactly() -> None:
    r = _ready()
    r.from_client(b"EHLO c\r\n")
    backend = (b"250-mx\r\n250-STARTTLS\r\n250-PIPELINING\r\n250-XFORWARD NAME ADDR\r\n250-BINARYMIME\r\n"
               b"250-AUTH PLAIN LOGIN\r\n250-XCLIENT ADDR\r\n250 CHUNKING\r\n")
    assert _to_client(r.from_backend(backend)) == b"250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN EXTERNAL\r\n"
    r = _ready()
    r.from_client(b"EHLO c\r\n")
    assert _to_client(r.from_backend(b"250-mx\r\n250 AUTH EXTERNAL PLAIN\r\n")) == (
        b"250-mx\r\n250 AUTH EXTERNAL PLAIN\r\n")
    r = _ready(login=False)
    r.from_client(b"EHLO c\r\n")
    assert _to_client(r.from_backend(b"250-mx\r\n250 AUTH PLAIN\r\n")) == b"250-mx\r\n250 AUTH PLAIN\r\n"


def test_filter_mode_ignores_a_login_rule() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True,
                  decide=lambda z: decide(RULE, {"idnat_ps": "810001234567"}, z), xclient=False)
    r.from_backend(b"220 mx ESMTP\r\n")
    r.from_client(b"EHLO c\r\n")
    assert _to_client(r.from_backend(b"250-mx\r\n250 PIPELINING\r\n")) == b"250-mx\r\n250 PIPELINING\r\n"
    assert _to_backend(r.from_client(b"AUTH EXTERNAL =\r\n")) == b"AUTH EXTERNAL =\r\n"


def test_xclient_offered_as_the_first_keyword() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx\r\n")
    assert _to_backend(r.from_backend(b"250-mx\r\n250 XCLIENT ADDR\r\n")).startswith(b"XCLIENT ADDR=")


def test_refusals_of_the_opening_say_why() -> None:
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx\r\n")
    r.from_backend(POSTFIX_EHLO)
    (stop,) = r.from_backend(b"550-5.7.0 not\r\n550 5.7.0 authorized\r\n220 late\r\n")   # nothing after the Stop
    assert isinstance(stop, Stop) and stop.detail == "XCLIENT refused: 550 5.7.0 not 5.7.0 authorized"
    r = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True, decide=None)
    r.from_backend(b"220 mx\r\n")
    (stop,) = r.from_backend(b"250 mx\r\n")
    assert isinstance(stop, Stop) and stop.detail == (
        "backend does not offer XCLIENT to the proxy (smtpd_authorized_xclient_hosts)")


def test_multiline_replies_are_passed_whole() -> None:
    r = _ready(consume=False, login=False)
    r.from_client(b"HELP\r\n")
    assert _to_client(r.from_backend(b"214-a\r\n214 b\r\n")) == b"214-a\r\n214 b\r\n"
    r.from_client(b"DATA\r\n")
    assert _to_client(r.from_backend(b"554-no\r\n554 data\r\n")) == b"554-no\r\n554 data\r\n"
    r.from_client(b"AUTH PLAIN\r\n")
    assert _to_client(r.from_backend(b"535-no\r\n535 auth\r\n")) == b"535-no\r\n535 auth\r\n"
    r2 = SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=False, decide=None)
    r2.from_backend(b"220 mx\r\n")
    r2.from_backend(POSTFIX_EHLO)
    assert _to_client(r2.from_backend(b"220-mx\r\n220 again\r\n")) == b"220-mx\r\n220 again\r\n"


def test_a_sasl_response_is_passed_and_holds_what_follows() -> None:
    r = _ready(login=False)
    r.from_client(b"AUTH LOGIN\r\n")
    r.from_backend(b"334 VXNlcm5hbWU6\r\n")
    assert _to_backend(r.from_client(b"dXNlcg==\r\nNOOP\r\n")) == b"dXNlcg==\r\n"
    assert _to_backend(r.from_backend(b"334 UGFzc3dvcmQ6\r\n")) == b"NOOP\r\n"   # Postfix read NOOP as the answer


def test_backend_line_limits() -> None:
    r = _ready()
    assert r.from_backend(b"2" * 8192) == []                               # max_line bytes, no LF yet: waits
    (stop,) = _ready().from_backend(b"2" * 8193)
    assert isinstance(stop, Stop) and stop.reason is Reason.BACKEND_PROTOCOL and stop.detail == "reply line too long"
    (stop,) = _ready().from_backend(b"\n")
    assert isinstance(stop, Stop) and stop.reason is Reason.BACKEND_PROTOCOL


def test_a_reply_of_exactly_64_kib_is_accepted_and_one_byte_more_refused() -> None:
    def reply(size: int) -> bytes:
        body = b"250-" + b"x" * 1000 + b"\r\n"
        lines = [body] * (size // len(body))
        rest = size - len(lines) * len(body)
        last = b"250 " + b"y" * (rest - 6) + b"\r\n"
        return b"".join(lines) + last

    for first in (False, True):
        r = _ready(login=False)
        if first:                                                  # the size counter restarts for each reply
            r.from_client(b"NOOP\r\n")
            r.from_backend(b"250 ok\r\n")
        r.from_client(b"HELP\r\n")
        assert _to_client(r.from_backend(reply(65536))).startswith(b"250-")
        r.from_client(b"HELP\r\n")
        out = r.from_backend(reply(65537))
        assert isinstance(out[-1], Stop) and out[-1].reason is Reason.BACKEND_PROTOCOL


def test_client_hold_limit_is_one_mib() -> None:
    r = _ready(login=False)
    r.from_client(b"DATA\r\n")
    assert r.from_client(b"x" * 1048576) == []
    out = r.from_client(b"x")
    assert isinstance(out[-1], Stop) and out[-1].detail == "client sent too much while its command was pending"


def test_default_command_line_limit_is_8192() -> None:
    r = _ready(login=False)
    line = b"NOOP " + b"a" * (8192 - 7) + b"\r\n"
    assert _to_backend(r.from_client(line)) == line
    out = _ready(login=False).from_client(b"NOOP " + b"a" * (8192 - 6) + b"\r\n")
    assert isinstance(out[-1], Stop) and out[-1].reason is Reason.LINE_TOO_LONG


def test_message_data_edges() -> None:
    r = _ready(login=False)
    _data(r)
    assert _to_backend(r.from_client(b"\n")) == b"\r\n"                      # an empty line, LF only
    assert _to_backend(r.from_client(b"line\r\npart")) == b"line\r\n"         # the partial line waits
    assert _to_backend(r.from_client(b"ial\r\n")) == b"partial\r\n"
    long_x = b"X" * 65546
    assert _to_backend(r.from_client(long_x + b"\r")) == long_x                # trailing CR held, X's passed
    assert _to_backend(r.from_client(b"\n.\r\n")) == b"\r\n.\r\n"


def test_long_data_line_limit_is_64_kib() -> None:
    r = _ready(login=False)
    _data(r)
    assert r.from_client(b"z" * 65536) == []
    assert _to_backend(r.from_client(b"z")) == b"z" * 65537


# -- decision 0012: a reply's text is decoded only where a detail uses it; each such detail, exactly ---------------
def test_reply_text_in_every_detail_that_carries_it() -> None:
    """The text (code and separators cut, lines joined by a space, non-printable bytes as "?") of the greeting
    refused in both modes, and of the EHLO refused after an XCLIENT LOGIN, in the Stop and in the Notice."""
    for r in (_filter(), SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True,
                                   decide=None)):
        (stop,) = r.from_backend(b"554-5.3.2 backend.local\r\n554 5.3.2 \x00unavailable\r\n")
        assert isinstance(stop, Stop) and stop.detail == "554 5.3.2 backend.local 5.3.2 ?unavailable"
    r = _ready()
    _ehlo(r)
    r.from_client(b"AUTH EXTERNAL =\r\n")
    r.from_backend(b"220 mx ESMTP\r\n")
    out = r.from_backend(b"421-4.3.0 going\r\n421 4.3.0 away\r\n")
    assert _notices(out) == [("auth", {"mechanism": "EXTERNAL", "result": "backend_refused",
                                       "mailbox": "alice@example.test", "detail": "421 4.3.0 going 4.3.0 away"})]
    assert isinstance(out[-1], Stop)
    assert out[-1].detail == "EHLO after XCLIENT LOGIN refused: 421 4.3.0 going 4.3.0 away"
