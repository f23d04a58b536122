"""Graceful drain with real clients (issue 13): SIGTERM stops accepting, IDLE sessions get ``* BYE`` at
once, the rest may finish up to ``drain.timeout`` and then get their protocol's goodbye; every session
still gets its ``connection`` event; the process exits 0; a second signal forces the end."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from tests.conftest import free_port
from tests.integration.clients import client_context, imap_starttls, smtp_starttls
from tests.integration.httppeers import HttpBackend
from tests.integration.lifecycle_kit import lifecycle_config, worker_pids
from tests.integration.peers import Dovecot, Postfix
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration
StartProxy = Callable[[dict[str, Any]], ProxyProcess]
SESSIONS = 50


def _idle_session(port: int, pki: TestPki, user: str) -> Any:
    m = imap_starttls(port, pki, "fort", None, timeout=30)
    m.login(user, "drainpw")
    assert m.select("INBOX")[0] == "OK"
    m.send(b"i1 IDLE\r\n")
    assert m.readline().startswith(b"+"), "no IDLE continuation"
    return m


def _read_until(m: Any, prefix: bytes, seconds: float) -> bytes:
    """The first line from the server starting with ``prefix`` (fails after ``seconds``)."""
    m.sock.settimeout(seconds)
    while True:
        line: bytes = m.readline()
        if not line:
            raise AssertionError(f"connection closed before {prefix!r}")
        if line.startswith(prefix):
            return line


def test_sigterm_with_50_idle_sessions_each_gets_bye(pki: TestPki, dovecot: Dovecot,
                                                     start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    cfg["listeners"] = [ls for ls in cfg["listeners"] if ls["name"] == "imap"]
    cfg["drain"] = {"timeout": "20s"}
    users = [f"drain{i}@example.test" for i in range(SESSIONS)]
    for u in users:
        if u not in dovecot.users:
            dovecot.add_user(u, "drainpw")
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imap is not None
    with ThreadPoolExecutor(max_workers=8) as pool:
        sessions = list(pool.map(lambda u: _idle_session(ports.imap, pki, u), users))  # type: ignore[arg-type]
    try:
        proxy.clear()
        t0 = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        byes = [_read_until(m, b"* BYE", 20.0) for m in sessions]
        code = proxy.proc.wait(timeout=25)
        elapsed = time.monotonic() - t0
    finally:
        for m in sessions:
            m.shutdown()
    assert all(b.startswith(b"* BYE [UNAVAILABLE]") for b in byes), byes[:3]
    assert code == 0, proxy.log_text()[-3000:]
    # Told at once, not after the 20 s drain time.
    assert elapsed < 10, elapsed
    proxy._reader.join(timeout=5)
    drained = [e for e in proxy.connection_events() if e["reason"] == "shutdown" and e.get("detail") == "drain"]
    assert len(drained) == SESSIONS, [e["reason"] for e in proxy.connection_events()]
    assert all(e["phase"] == "relay" for e in drained)
    print(f"{SESSIONS} IDLE sessions: BYE to all and exit 0 in {elapsed:.2f}s")


def test_drain_timeout_then_goodbyes_in_each_protocol(pki: TestPki, dovecot: Dovecot, postfix: Postfix,
                                                      http_backend: HttpBackend, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, postfix.smtp_port, workers=2)
    https_port = free_port()
    cfg["listeners"].append({"name": "https", "bind": f"127.0.0.1:{https_port}", "protocol": "https",
                             "backend": f"127.0.0.1:{http_backend.port}", "flow": "2bis"})
    cfg["drain"] = {"timeout": 3}
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imap and ports.smtp
    m = imap_starttls(ports.imap, pki, "fort", None)
    m.login("alice@example.test", "alicepw")
    assert m.select("INBOX")[0] == "OK"             # logged in, between commands: not IDLE
    s = smtp_starttls(ports.smtp, pki, "fort", None)
    ctx = client_context(pki, "fort")
    conn = http.client.HTTPSConnection("127.0.0.1", https_port, timeout=20)
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", https_port), timeout=20),
                                server_hostname=None)
    idle = ctx.wrap_socket(socket.create_connection(("127.0.0.1", https_port), timeout=20), server_hostname=None)
    idle.sendall(b"GET /first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = idle.recv(65536)
    # the whole response, which may come in several TLS records (head and body are two backend writes):
    # a body left unread would be read below in place of the drain's close
    head, _, body = first.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head + b"\r\n").group(1))  # type: ignore[union-attr]
    while len(body) < length:
        more = idle.recv(65536)
        assert more, "response cut short"
        body += more
    assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()   # kept alive
    conn.request("GET", "/slow?delay=1")            # in flight when the drain starts
    time.sleep(0.3)
    t0 = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    # The keep-alive connection between requests owes nothing: closed at once.
    idle.settimeout(2)
    assert idle.recv(65536) == b""
    assert time.monotonic() - t0 < 1.5
    idle.close()
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("connection", "").lower() == "close"
    resp.read()
    # A new connection is refused at once (the listeners closed), while the old ones are still open.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports.imap), timeout=5).close()
    bye = _read_until(m, b"* BYE", 10)
    t_bye = time.monotonic() - t0
    code, text = s.getreply()
    assert bye.startswith(b"* BYE [UNAVAILABLE]")
    assert code == 421 and text.startswith(b"4.3.2"), (code, text)
    assert 2.5 <= t_bye <= 6, t_bye                  # after the 3 s drain time, not before
    assert proxy.proc.wait(timeout=15) == 0
    proxy._reader.join(timeout=5)
    events = proxy.connection_events()
    by_listener = {e["listener"]: e for e in events if e["listener"] != "https"}
    assert by_listener["imap"]["reason"] == "shutdown" and by_listener["smtp"]["reason"] == "shutdown"
    https = sorted((e for e in events if e["listener"] == "https"), key=lambda e: e["reason"])
    assert [(e["reason"], e["requests"]) for e in https] == [("ok", 1), ("shutdown", 1)], https
    m.shutdown()
    s.close()


def test_second_sigterm_forces_the_end(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    cfg["drain"] = {"timeout": "60s"}
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imap is not None
    m = imap_starttls(ports.imap, pki, "fort", None)
    m.login("alice@example.test", "alicepw")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(_read_until(m, b"* BYE", 20)), daemon=True)
    reader.start()
    t0 = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.wait_log("draining")
    time.sleep(0.5)
    assert proxy.proc.poll() is None                 # draining, up to 60 s
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(timeout=10)
    reader.join(timeout=10)
    assert time.monotonic() - t0 < 10
    assert got and got[0].startswith(b"* BYE [UNAVAILABLE]")
    assert "forced_stop" in proxy.log_text()
    m.shutdown()
