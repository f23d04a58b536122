"""Smoke tests: the private Dovecot and Postfix fixtures work with real clients."""

from __future__ import annotations

import imaplib
import os
import smtplib
import socket
import struct
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import free_ports
from tests.integration import peers
from tests.integration.peers import Dovecot, Postfix

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


def proxy_v2_header(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """Minimal PROXY protocol v2 header (haproxy proxy-protocol.txt section 2.2): PROXY command, TCP over
    IPv4, no TLVs."""
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    ver_cmd = 0x21  # version 2, command PROXY
    fam = 0x11  # AF_INET, STREAM
    addresses = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    return signature + bytes([ver_cmd, fam]) + struct.pack("!H", len(addresses)) + addresses


class ImapBehindProxy(imaplib.IMAP4):
    """imaplib client that writes a PROXY v2 header before the server greeting is read."""

    def __init__(self, host: str, port: int, header: bytes) -> None:
        self._proxy_header = header
        super().__init__(host, port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock: socket.socket = super()._create_socket(timeout)  # type: ignore[misc]
        sock.sendall(self._proxy_header)
        return sock


def test_imap_login_select(dovecot: Dovecot) -> None:
    m = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)
    try:
        assert m.login("alice@example.test", "alicepw")[0] == "OK"
        typ, _ = m.select("INBOX")
        assert typ == "OK"
    finally:
        m.logout()


def test_imap_bad_password_refused(dovecot: Dovecot) -> None:
    m = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            m.login("alice@example.test", "wrong")
    finally:
        m.logout()


def test_imap_card_user_and_master_user(dovecot: Dovecot) -> None:
    m = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)
    try:
        assert m.login("810001234567", "cardpw")[0] == "OK"
    finally:
        m.logout()
    # master user logs in as the card user without knowing its password
    m = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)
    try:
        assert m.login(f"810001234567{dovecot.master_separator}proxy-master", "masterpw")[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()
    assert dovecot.wait_for_log("user=<810001234567>")


def test_added_user_can_login(dovecot: Dovecot) -> None:
    name = f"added-{uuid.uuid4().hex[:8]}@example.test"
    dovecot.add_user(name, "addedpw")
    m = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)
    try:
        assert m.login(name, "addedpw")[0] == "OK"
    finally:
        m.logout()


def test_proxy_v2_forwarded_address(dovecot: Dovecot) -> None:
    fake_client = ("192.0.2.44", 50123)
    header = proxy_v2_header(fake_client, (dovecot.host, dovecot.imap_haproxy_port))
    m = ImapBehindProxy(dovecot.host, dovecot.imap_haproxy_port, header)
    try:
        assert m.login("bob@example.test", "bobpw")[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()
    # login_log_format_elements: "Login: user=<bob@example.test>, method=PLAIN, rip=192.0.2.44, ..."
    assert dovecot.wait_for_log(f"user=<bob@example.test>, method=PLAIN, rip={fake_client[0]},"), (
        dovecot.read_log())


def test_xclient_offered(postfix: Postfix) -> None:
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=TIMEOUT) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.has_extn("xclient"), s.esmtp_features
        assert "addr" in s.esmtp_features["xclient"].lower().split()


def test_mail_delivered_to_dovecot(postfix: Postfix, dovecot: Dovecot) -> None:
    marker = f"peers-smoke-{uuid.uuid4().hex}"
    msg = EmailMessage()
    msg["From"] = "sender@client.test"
    msg["To"] = "alice@example.test"
    msg["Subject"] = marker
    msg.set_content("hello from the peers smoke test\n")
    with smtplib.SMTP(postfix.host, postfix.smtp_port, timeout=TIMEOUT) as s:
        s.ehlo("client.test")
        refused = s.send_message(msg)
        assert refused == {}

    deadline = time.monotonic() + TIMEOUT
    found = False
    while not found and time.monotonic() < deadline:
        m = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT)
        try:
            m.login("alice@example.test", "alicepw")
            m.select("INBOX", readonly=True)
            typ, data = m.search(None, "SUBJECT", f'"{marker}"')
            found = typ == "OK" and bool(data[0] and data[0].split())
        finally:
            m.logout()
        if not found:
            time.sleep(0.2)
    assert found, (f"mail not delivered in {TIMEOUT}s\n"
                   f"postfix:\n{postfix.read_log()}\ndovecot:\n{dovecot.read_log()}")


@pytest.mark.parametrize("kind", ["dovecot", "postfix"])
def test_port_collision_is_retried(kind: str, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probed port taken before the peer binds it: the starter picks new ports and starts anyway."""
    squatter = socket.create_server((dovecot.host, 0))
    taken = squatter.getsockname()[1]
    calls: list[int] = []

    def first_taken(count: int, host: str = "127.0.0.1") -> list[int]:
        calls.append(count)
        ports = free_ports(count, host)
        return [taken, *ports[1:]] if len(calls) == 1 else ports

    monkeypatch.setattr(peers, "free_ports", first_taken)
    try:
        started: Dovecot | Postfix
        if kind == "dovecot":
            started = peers.start_dovecot()
            port = started.imap_port
        else:
            started = peers.start_postfix(dovecot.lmtp_port)
            port = started.smtp_port
        try:
            assert len(calls) == 2
            assert port != taken
            assert "Address already in use" in started.read_log() or kind == "dovecot"
            with socket.create_connection((started.host, port), timeout=TIMEOUT) as s:
                s.settimeout(TIMEOUT)
                assert s.recv(64)[:1] in (b"*", b"2")  # IMAP "* OK" / SMTP "220"
        finally:
            started.stop(graceful=False)
        assert not started.root.exists()
    finally:
        squatter.close()


def test_leftovers_of_a_killed_run_are_reaped(dovecot: Dovecot) -> None:
    """A test run killed without teardown leaves peers running: the next start reaps them."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tests.integration.peers import start_dovecot, start_postfix\n"
         "d = start_dovecot(); p = start_postfix(d.lmtp_port)\n"
         "print(d.root, p.root, d.proc.pid, p.master_pid(), flush=True)\n"
         "time.sleep(60)\n"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        droot, proot, dpid, ppid = child.stdout.readline().split()
        pids = [int(dpid), int(ppid)]
    finally:
        child.kill()
        child.wait(timeout=TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()
    assert Path(droot).exists() and Path(proot).exists()
    os.kill(pids[0], 0)  # still running after their owner died
    os.kill(pids[1], 0)
    reaped = peers.reap_stale()
    assert {Path(droot), Path(proot)} <= set(reaped)
    assert not Path(droot).exists() and not Path(proot).exists()
    assert dovecot.root.exists()  # a live run's instance is left alone
    for pid in pids:
        assert not peers.pid_alive(pid)  # gone, or a zombie waiting for init
