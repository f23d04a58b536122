"""The demo's plaintext ESMTP server: every recipient of a message gets it in its INBOX of the :class:`MailStore`."""

from __future__ import annotations

import re

from sniproxy.demo.backend_base import (
    MAILBOX_MAX,
    MESSAGE_MAX,
    RECIPIENTS_MAX,
    SMTP_HOSTNAME,
    BoundedConn,
    DemoServer,
    SessionRecord,
    check_plain,
)

_MAIL_FROM = re.compile(r"FROM:\s*<([^<>]*)>\s*(.*)\Z", re.IGNORECASE)
_RCPT_TO = re.compile(r"TO:\s*<([^<>]+)>\s*(.*)\Z", re.IGNORECASE)
_EHLO_LINES = ("PIPELINING", "8BITMIME", "STARTTLS", "AUTH PLAIN", f"SIZE {MESSAGE_MAX}")


class _SmtpSession:
    """One ESMTP connection (RFC 5321 §4.1); the transaction is the envelope being built."""

    def __init__(self, server: DemoSmtpServer, conn: BoundedConn, record: SessionRecord) -> None:
        self.server, self.conn, self.record = server, conn, record
        self.helo: str | None = None
        self.user: str | None = None
        self.mail_from: str | None = None
        self.rcpts: list[str] = []

    async def reply(self, text: str) -> None:
        await self.conn.send(f"{text}\r\n".encode())

    def reset(self) -> None:
        self.mail_from, self.rcpts = None, []

    async def run(self) -> None:
        await self.reply(f"220 {SMTP_HOSTNAME} ESMTP")
        while True:
            line = (await self.conn.read_line()).rstrip(b"\r\n").decode("utf-8", "replace")
            verb, _, arg = line.partition(" ")
            verb, arg = verb.upper(), arg.strip()
            if verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            await self._dispatch(verb, arg)

    async def _dispatch(self, verb: str, arg: str) -> None:
        if verb in ("EHLO", "HELO"):
            if not arg:
                await self.reply(f"501 5.5.4 {verb} needs a domain")
                return
            self.helo = arg
            self.reset()
            if verb == "HELO":
                await self.reply(f"250 {SMTP_HOSTNAME}")
            else:
                lines = [SMTP_HOSTNAME, *_EHLO_LINES]
                await self.reply("\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}"
                                             for i, text in enumerate(lines)))
        elif verb == "NOOP":
            await self.reply("250 2.0.0 Ok")
        elif verb == "RSET":
            self.reset()
            await self.reply("250 2.0.0 Ok")
        elif verb == "STARTTLS":
            await self.reply("454 4.7.0 TLS is the proxy's job: this demo backend is plaintext only")
        elif verb in ("AUTH", "MAIL", "RCPT", "DATA") and self.helo is None:
            await self.reply("503 5.5.1 Send HELO/EHLO first")
        elif verb == "AUTH":
            await self._auth(arg)
        elif verb == "MAIL":
            await self._mail(arg)
        elif verb == "RCPT":
            await self._rcpt(arg)
        elif verb == "DATA":
            await self._data(arg)
        else:
            await self.reply("500 5.5.2 Command not recognized")

    async def _auth(self, arg: str) -> None:
        mech, _, initial = arg.partition(" ")
        if self.user is not None or self.mail_from is not None:
            await self.reply("503 5.5.1 AUTH not allowed now")
            return
        if mech.upper() != "PLAIN":
            await self.reply("504 5.5.4 Unrecognized authentication type")
            return
        response = initial.strip()
        if not response:  # RFC 4954 §4: empty challenge, one line back
            await self.reply("334 ")
            response = (await self.conn.read_line()).decode("utf-8", "replace").strip()
        if response == "*":
            await self.reply("501 5.7.0 Authentication cancelled")
            return
        user = check_plain("" if response == "=" else response)
        if user is None:
            await self.reply("535 5.7.8 Authentication credentials invalid")
            return
        self.user = user
        self.record.logins.append(user)
        await self.reply("235 2.7.0 Authentication successful")

    async def _mail(self, arg: str) -> None:
        if self.mail_from is not None:
            await self.reply("503 5.5.1 Nested MAIL command")
            return
        m = _MAIL_FROM.match(arg)
        if m is None:
            await self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        for param in m[2].split():
            key, _, value = param.partition("=")
            key = key.upper()
            if key == "SIZE" and value.isdigit() and int(value) > MESSAGE_MAX:
                await self.reply("552 5.3.4 Message size exceeds fixed limit")
                return
            if key not in ("SIZE", "BODY", "AUTH"):
                await self.reply(f"555 5.5.4 Unsupported parameter {key}")
                return
        self.mail_from = m[1]
        await self.reply("250 2.1.0 Ok")

    async def _rcpt(self, arg: str) -> None:
        if self.mail_from is None:
            await self.reply("503 5.5.1 Need MAIL command")
            return
        m = _RCPT_TO.match(arg)
        if m is None or m[2]:
            await self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if len(self.rcpts) >= RECIPIENTS_MAX:
            await self.reply("452 4.5.3 Too many recipients")
            return
        self.rcpts.append(m[1])
        await self.reply("250 2.1.5 Ok")

    async def _data(self, arg: str) -> None:
        if arg:
            await self.reply("501 5.5.4 DATA takes no argument")
            return
        if self.mail_from is None or not self.rcpts:
            await self.reply("503 5.5.1 Need RCPT command")
            return
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        chunks: list[bytes] = []
        size, too_big = 0, False
        while True:
            line = await self.conn.read_line()
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b"."):  # RFC 5321 §4.5.2 transparency
                line = line[1:]
            size += len(line)
            if size > MESSAGE_MAX:
                too_big = True
                chunks.clear()  # keep reading to the end of DATA, storing nothing
            elif not too_big:
                chunks.append(line)
        rcpts = self.rcpts
        self.reset()
        if too_big:
            await self.reply("552 5.3.4 Message size exceeds fixed limit")
            return
        data = b"".join(chunks)
        full = [r for r in rcpts if len(self.server.store.box(r)) >= MAILBOX_MAX]
        if full:  # checked first so that a message is delivered to all its recipients or to none
            await self.reply(f"452 4.2.2 Mailbox full: {full[0]}")
            return
        for rcpt in rcpts:
            self.server.store.deliver(rcpt, data)
        self.record.delivered += 1
        await self.reply(f"250 2.0.0 Ok: delivered to {len(rcpts)} recipient(s)")


class DemoSmtpServer(DemoServer):
    """Plaintext ESMTP over a :class:`MailStore`: every recipient gets the message in its INBOX."""

    protocol = "smtp"
    _too_long_reply = b"500 5.5.6 Line too long\r\n"

    async def _serve(self, conn: BoundedConn, record: SessionRecord) -> None:
        await _SmtpSession(self, conn, record).run()
