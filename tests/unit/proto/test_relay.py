"""The one post-TLS mail relay interface (``proto/relay.py``): IMAP and SMTP driven the same way.

A small sans-IO driver below does what ``sniproxy.connection`` does with any ``MailRelay`` (hold the
client's bytes until ``ready``, carry out actions in order up to a ``Stop``), with no socket and no
knowledge of which protocol it drives.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sniproxy.auth.login import LoginRule, decide
from sniproxy.errors import Reason
from sniproxy.proto import actions, relay
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.imap_relay import ImapRelay
from sniproxy.proto.relay import MailRelay, Notice, RelayAction, Stop, ToBackend, ToClient
from sniproxy.proto.smtp_relay import SmtpRelay

RULE = LoginRule(mapping={"810001234567": ("alice@example.test",)})
CARD = {"idnat_ps": "810001234567"}


@dataclass
class Wire:
    """What a driver did with the actions of one relay."""

    client: bytearray = field(default_factory=bytearray)
    backend: bytearray = field(default_factory=bytearray)
    notices: list[Notice] = field(default_factory=list)
    stop: Stop | None = None
    held: bytearray = field(default_factory=bytearray)


def apply(wire: Wire, out: list[RelayAction]) -> None:
    for action in out:
        assert wire.stop is None, "an action after a Stop"
        if isinstance(action, ToClient):
            wire.client += action.data
        elif isinstance(action, ToBackend):
            wire.backend += action.data
        elif isinstance(action, Notice):
            wire.notices.append(action)
        else:
            wire.stop = action


def client(r: MailRelay, wire: Wire, data: bytes) -> None:
    if not r.ready:
        wire.held += data
        return
    apply(wire, r.from_client(data))


def backend(r: MailRelay, wire: Wire, data: bytes) -> None:
    was_ready = r.ready
    apply(wire, r.from_backend(data))
    if r.ready and not was_ready and wire.held:
        held, wire.held = bytes(wire.held), bytearray()
        apply(wire, r.from_client(held))


def imap(login: bool) -> MailRelay:
    if login:
        return ImapRelay(consume_greeting=True, login=ImapExternal(
            decide=lambda z: decide(RULE, CARD, z), master_user="m", master_password="p"))
    return ImapRelay(consume_greeting=True, login=None)


def smtp(login: bool) -> MailRelay:
    return SmtpRelay(client_addr=("192.0.2.7", 1), helo="", hostname="p", consume_greeting=True,
                     decide=(lambda z: decide(RULE, CARD, z)) if login else None)


POSTFIX_EHLO = b"250-mx\r\n250-XCLIENT ADDR NAME\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"


def test_one_stop_for_every_dialog() -> None:
    """The pre-TLS dialogs and the relays end a connection with the same action (no Close beside Stop)."""
    assert relay.Stop is actions.Stop
    assert not hasattr(actions, "Close")


@pytest.mark.parametrize("factory", [imap, smtp])
@pytest.mark.parametrize("login", [True, False])
def test_both_relays_are_mail_relays(factory: Callable[[bool], MailRelay], login: bool) -> None:
    r = factory(login)
    assert isinstance(r.ready, bool) and not r.ready
    for name in ("from_client", "from_backend", "backend_closed"):
        assert callable(getattr(r, name))


def test_imap_session_through_the_interface() -> None:
    r, wire = imap(True), Wire()
    client(r, wire, b"t0 CAPABILITY\r\n")              # before the backend greeting: held
    assert wire.backend == b""
    backend(r, wire, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    assert r.ready and wire.backend == b"t0 CAPABILITY\r\n" and wire.client == b""
    backend(r, wire, b"* CAPABILITY IMAP4rev1 STARTTLS\r\nt0 OK done\r\n")
    assert wire.client == b"* CAPABILITY IMAP4rev1 AUTH=EXTERNAL\r\nt0 OK done\r\n"
    client(r, wire, b"t1 AUTHENTICATE EXTERNAL =\r\n")
    assert wire.backend.endswith(b"t1 AUTHENTICATE PLAIN " + base64.b64encode(b"alice@example.test\0m\0p") + b"\r\n")
    backend(r, wire, b"t1 OK Logged in\r\n")
    assert [n.fields["result"] for n in wire.notices] == ["ok"]
    assert r.backend_closed() == [ToClient(b"* BYE [UNAVAILABLE] Backend closed the connection\r\n")]
    assert wire.stop is None


def test_smtp_session_through_the_interface() -> None:
    r, wire = smtp(True), Wire()
    client(r, wire, b"EHLO c\r\n")
    backend(r, wire, b"220 mx ESMTP\r\n")
    assert wire.backend == b"EHLO p\r\n" and not r.ready
    backend(r, wire, POSTFIX_EHLO)
    assert wire.backend.startswith(b"EHLO p\r\nXCLIENT ADDR=192.0.2.7 PORT=1 ")
    backend(r, wire, b"220 mx ESMTP\r\n")
    assert r.ready and wire.backend.endswith(b"\r\nEHLO c\r\n") and wire.client == b""
    backend(r, wire, POSTFIX_EHLO)
    assert wire.client == b"250-mx\r\n250-AUTH PLAIN EXTERNAL\r\n250 8BITMIME\r\n"
    client(r, wire, b"AUTH EXTERNAL =\r\n")
    assert wire.backend.endswith(b"XCLIENT LOGIN=alice@example.test\r\n")
    backend(r, wire, b"220 mx ESMTP\r\n")
    backend(r, wire, POSTFIX_EHLO)
    assert wire.client.endswith(b"235 2.7.0 Authentication successful\r\n")
    assert [n.fields["result"] for n in wire.notices] == ["ok"]
    assert r.backend_closed() == []                    # Postfix says its own 421
    assert wire.stop is None


@pytest.mark.parametrize(("factory", "refusal"), [(imap, b"* BYE busy\r\n"), (smtp, b"554 busy\r\n")])
def test_a_refused_opening_is_a_backend_stop_on_both(factory: Callable[[bool], MailRelay], refusal: bytes) -> None:
    r, wire = factory(True), Wire()
    client(r, wire, b"x\r\n")
    backend(r, wire, refusal)
    assert wire.stop is not None and wire.stop.reason is Reason.BACKEND_REFUSED
    assert not r.ready and wire.backend == b"" and wire.client == b""
