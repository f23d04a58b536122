"""The demo's built-in plaintext backends, driven by real stdlib clients on loopback.

imaplib and smtplib block, so they run in a worker thread; raw-protocol checks use asyncio streams.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from sniproxy.demo.backend_base import LINE_MAX, MESSAGE_MAX, DeliveryRefused, MailStore
from sniproxy.demo.imap_backend import DemoImapServer
from sniproxy.demo.smtp_backend import DemoSmtpServer

USER = "alice@example.test"
MESSAGE = b"From: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n.leading dot\r\n..two\r\n"


@dataclass
class Backends:
    store: MailStore
    imap: DemoImapServer
    smtp: DemoSmtpServer
    imap_port: int
    smtp_port: int


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    store = MailStore()
    imap, smtp = DemoImapServer(store, idle_timeout=5), DemoSmtpServer(store, idle_timeout=5)
    b = Backends(store, imap, smtp, await imap.start(), await smtp.start())
    yield b
    await imap.stop()
    await smtp.stop()


async def _converse(port: int, data: bytes) -> bytes:
    """Send ``data`` pipelined (ending with LOGOUT or QUIT); return all the server said until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            writer.write(data)
            await writer.drain()
            return await reader.read()
    finally:
        writer.close()


def _send_mail(port: int, rcpts: list[str], body: bytes, *,
               login: str | None = None) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
        s.ehlo("client.test")
        if login is not None:
            s.login(login, "demo")
        return s.sendmail("bob@example.test", rcpts, body)


async def test_smtp_delivery_appears_in_imap_inbox(backends: Backends) -> None:
    refused = await asyncio.to_thread(_send_mail, backends.smtp_port, [f"<{USER.upper()}>", "carol@x.test"],
                                      MESSAGE, login=USER)
    assert refused == {}
    assert backends.store.messages(USER) == [MESSAGE]  # dot-stuffing undone, bytes intact
    assert backends.store.messages("carol@x.test") == [MESSAGE]

    def client() -> tuple[Any, Any, Any, Any]:
        m = imaplib.IMAP4("127.0.0.1", backends.imap_port, timeout=5)
        assert m.login(USER, "demo")[0] == "OK"
        typ, exists = m.select("INBOX")
        assert typ == "OK"
        _, fetched = m.fetch("1", "(FLAGS RFC822)")
        _, uid_fetched = m.uid("FETCH", "1", "(BODY.PEEK[HEADER])")
        _, search = m.search(None, "ALL")
        m.logout()
        return exists, fetched, uid_fetched, search

    exists, fetched, uid_fetched, search = await asyncio.to_thread(client)
    assert exists == [b"1"]
    assert fetched[0] == (b"1 (RFC822 {%d}" % len(MESSAGE), MESSAGE)
    assert fetched[1] == b" FLAGS (\\Seen))"
    assert uid_fetched[0] == (b"1 (UID 1 BODY[HEADER] {39}", b"From: bob@example.test\r\nSubject: hi\r\n\r\n")
    assert search == [b"1"]
    imap_sessions = list(backends.imap.sessions)
    assert imap_sessions[-1].logins == [USER] and imap_sessions[-1].peer.startswith("127.0.0.1:")
    assert backends.smtp.sessions[-1].logins == [USER] and backends.smtp.sessions[-1].delivered == 1


async def test_imap_capability_advertises_starttls(backends: Backends) -> None:
    def caps() -> tuple[object, ...]:
        m = imaplib.IMAP4("127.0.0.1", backends.imap_port, timeout=5)
        try:
            return tuple(m.capabilities)
        finally:
            m.logout()

    assert {"IMAP4REV1", "AUTH=PLAIN", "STARTTLS"} <= set(await asyncio.to_thread(caps))
    out = await _converse(backends.imap_port, b"a CAPABILITY\r\nb STARTTLS\r\nz LOGOUT\r\n")
    assert out.startswith(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] demo backend ready\r\n"
                          b"* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS\r\n"
                          b"a OK CAPABILITY completed\r\nb BAD ")


async def test_imap_authenticate_plain(backends: Backends) -> None:
    backends.store.deliver(USER, MESSAGE)

    def client(password: bytes) -> str:
        m = imaplib.IMAP4("127.0.0.1", backends.imap_port, timeout=5)
        try:
            m.authenticate("PLAIN", lambda _: b"\0" + USER.encode() + b"\0" + password)
            return m.select("INBOX")[1][0].decode()  # type: ignore[union-attr]
        except imaplib.IMAP4.error as exc:
            return f"error {exc}"
        finally:
            m.logout()

    assert await asyncio.to_thread(client, b"demo") == "1"
    assert "AUTHENTICATIONFAILED" in await asyncio.to_thread(client, b"wrong")
    assert [s.logins for s in backends.imap.sessions] == [[USER], []]


async def test_imap_login_with_literals_and_list(backends: Backends) -> None:
    out = await _converse(backends.imap_port, b'a LOGIN {5}\r\nalice {4+}\r\ndemo\r\nb LIST "" *\r\n'
                                              b'c LIST "" ""\r\nd LIST "" Sent\r\nz LOGOUT\r\n')
    assert b"+ Ready for literal data\r\na OK " in out
    assert b'* LIST (\\HasNoChildren) "/" INBOX\r\nb OK' in out
    assert b'* LIST (\\Noselect) "/" ""\r\nc OK' in out
    assert b"\r\nd OK" in out
    assert backends.imap.sessions[-1].logins == ["alice"]


@pytest.mark.parametrize("line", [b"a FROBNICATE\r\n", b"a FETCH 1 RFC822\r\n", b'a LOGIN "unterminated\r\n',
                                  b"a SELECT\r\n", b"a LIST \"\" *\r\n",
                                  b"a LOGIN x demo\r\na FETCH 1 FLAGS\r\n"])
async def test_imap_bad_command(backends: Backends, line: bytes) -> None:
    out = await _converse(backends.imap_port, line + b"z LOGOUT\r\n")
    assert out.split(b"\r\n")[-4].startswith(b"a BAD "), out


async def test_imap_untagged_bad_and_wrong_password(backends: Backends) -> None:
    out = await _converse(backends.imap_port, b"\r\nx LOGIN alice secret\r\nz LOGOUT\r\n")
    assert b"\r\n* BAD " in out and b"x NO [AUTHENTICATIONFAILED]" in out


async def test_imap_empty_mailbox_and_set_errors(backends: Backends) -> None:
    out = await _converse(backends.imap_port, b"a LOGIN alice demo\r\nb EXAMINE INBOX\r\nc FETCH 1 FLAGS\r\n"
                                              b"d UID FETCH 1:* FLAGS\r\ne SEARCH ALL\r\nf SELECT Sent\r\n"
                                              b"g FETCH 1 FLAGS\r\nz LOGOUT\r\n")
    assert b"* 0 EXISTS" in out and b"b OK [READ-ONLY]" in out
    assert b"c BAD" in out and b"\r\nd OK" in out and b"* SEARCH\r\ne OK" in out
    assert b"f NO [NONEXISTENT]" in out and b"g BAD no mailbox selected" in out
    assert out.endswith(b"* BYE demo backend logging out\r\nz OK LOGOUT completed\r\n")


async def test_imap_noop_announces_new_mail_and_seen(backends: Backends) -> None:
    backends.store.deliver(USER, MESSAGE)
    reader, writer = await asyncio.open_connection("127.0.0.1", backends.imap_port)
    try:
        async with asyncio.timeout(5):
            writer.write(f"a LOGIN {USER} demo\r\nb SELECT INBOX\r\n".encode())
            while not (await reader.readline()).startswith(b"b OK [READ-WRITE]"):
                pass
            backends.store.deliver(USER, b"Subject: 2\r\n\r\nsecond\r\n")
            writer.write(b"c NOOP\r\nd FETCH 2 (UID BODY[TEXT]<0.3>)\r\ne FETCH 1:* FLAGS\r\nz LOGOUT\r\n")
            out = await reader.read()
    finally:
        writer.close()
    assert out.startswith(b"* 2 EXISTS\r\nc OK")
    assert b"* 2 FETCH (UID 2 BODY[TEXT]<0> {3}\r\nsec FLAGS (\\Seen))\r\nd OK" in out
    assert b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS (\\Seen))\r\ne OK" in out


@pytest.mark.parametrize("proto", ["imap", "smtp"])
async def test_oversized_line_closes_connection(backends: Backends, proto: str) -> None:
    port = backends.imap_port if proto == "imap" else backends.smtp_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            await reader.readline()
            writer.write(b"a NOOP " + b"x" * (LINE_MAX + 100) + b"\r\n")
            await writer.drain()
            rest = await reader.read()  # read() returns only at EOF: the server closed
    finally:
        writer.close()
    assert rest in (b"* BYE line too long\r\n", b"500 5.5.6 Line too long\r\n")


async def test_smtp_dialog(backends: Backends) -> None:
    out = await _converse(backends.smtp_port, b"MAIL FROM:<a@b>\r\nEHLO c\r\nSTARTTLS\r\n"
                                              b"AUTH PLAIN AGFsaWNlAHdyb25n\r\nRCPT TO:<x@y>\r\n"
                                              b"MAIL FROM:<> SIZE=99999999\r\nVRFY x\r\nAUTH PLAIN\r\n*\r\n"
                                              b"AUTH LOGIN\r\nDATA\r\nQUIT\r\n")
    lines = out.decode().split("\r\n")
    assert lines[0] == "220 demo-backend ESMTP"
    assert lines[1].startswith("503")
    assert lines[2:8] == ["250-demo-backend", "250-PIPELINING", "250-8BITMIME", "250-STARTTLS",
                          "250-AUTH PLAIN", f"250 SIZE {MESSAGE_MAX}"]
    assert [line[:3] for line in lines[8:]] == ["454", "535", "503", "552", "500", "334", "501", "504", "503",
                                                 "221", ""]


async def test_smtp_pipelined_transaction(backends: Backends) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", backends.smtp_port)
    try:
        async with asyncio.timeout(5):
            await reader.readline()
            writer.write(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@x>\r\n"
                         b"DATA\r\nline\r\n..dot\r\n.\r\nQUIT\r\n")
            await writer.drain()
            out = await reader.read()
    finally:
        writer.close()
    assert [line[:3] for line in out.split(b"\r\n")[:-1]] == [b"250", b"250", b"250", b"354", b"250", b"221"]
    assert backends.store.messages("BOB@x") == [b"line\r\n.dot\r\n"]


async def test_store_bounds_and_stop_closes_clients(backends: Backends) -> None:
    with pytest.raises(DeliveryRefused):
        backends.store.deliver(USER, b"x" * (MESSAGE_MAX + 1))
    reader, writer = await asyncio.open_connection("127.0.0.1", backends.imap_port)
    await reader.readline()
    await backends.imap.stop()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    assert backends.imap.sessions[-1].closed
