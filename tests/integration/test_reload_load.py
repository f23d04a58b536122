"""Acceptance (issue 13): real clients of every kind keep working while the config is reloaded 100
times, 10 of them invalid, with ``workers: 2``.

Clients, each in its own thread, in a loop bounded in count and time: IMAP STARTTLS (imaplib, login,
SELECT, NOOP), SMTP submission (smtplib, STARTTLS, MAIL/RCPT, a real message every few rounds), IMAPS
(implicit TLS) and HTTPS (http.client). Meanwhile the flow ``2bis`` certificate alternates between the
2BIS and the IGC Sante one; after each valid reload ``openssl s_client`` must see the new one, after each
invalid one (key of the other certificate) the refusal is logged with its file:line error and the
certificate stays.
"""

from __future__ import annotations

import http.client
import imaplib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from tests.conftest import free_port
from tests.integration.clients import client_context, imap_starttls, smtp_starttls
from tests.integration.httppeers import HttpBackend
from tests.integration.lifecycle_kit import (
    IMAP_2BIS,
    IMAP_SANTE,
    lifecycle_config,
    reload_and_wait,
    rewrite,
    served_cn,
    with_flow_cert,
    worker_pids,
)
from tests.integration.peers import Dovecot, Postfix
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration
RELOADS, INVALID_EVERY = 100, 10
WALL_LIMIT = 90.0      # the whole loop; it takes well under a minute here
CLIENT_ROUNDS = 5000   # per client thread, a bound the wall limit reaches first


class Clients:
    """Client threads counting successes and keeping every failure."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ok: dict[str, int] = {}
        self.failures: list[tuple[str, float, str]] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, name: str, one: Callable[[int], None]) -> None:
        def loop() -> None:
            for i in range(CLIENT_ROUNDS):
                if self.stop.is_set():
                    return
                try:
                    one(i)
                except Exception as exc:  # every failure is a finding: keep it whole
                    with self._lock:
                        self.failures.append((name, time.time(), repr(exc)))
                else:
                    with self._lock:
                        self.ok[name] = self.ok.get(name, 0) + 1
                # A steady load, not a flood: the reloads share these 2 cores with the clients.
                self.stop.wait(0.05)
        t = threading.Thread(target=loop, name=name, daemon=True)
        self.threads.append(t)
        t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def test_100_reloads_10_invalid_under_client_load(pki: TestPki, dovecot: Dovecot, postfix: Postfix,
                                                  http_backend: HttpBackend,
                                                  start_proxy: Callable[[dict[str, Any]], ProxyProcess]) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, postfix.smtp_port, workers=2)
    https_port = free_port()
    cfg["listeners"].append({"name": "https", "bind": f"127.0.0.1:{https_port}", "protocol": "https",
                             "backend": f"127.0.0.1:{http_backend.port}",
                             "sni": {"mss-msg.mssante.fr": "2bis", "mss-msg-igcsante.mssante.fr": "igcsante"},
                             "default_flow": "2bis"})
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imap and ports.smtp and ports.imaps
    ctx = client_context(pki, "fort")

    def imap(_: int) -> None:
        m = imap_starttls(ports.imap, pki, "fort", None)  # type: ignore[arg-type]
        m.login("alice@example.test", "alicepw")
        assert m.select("INBOX")[0] == "OK" and m.noop()[0] == "OK"
        m.logout()

    def smtp(i: int) -> None:
        s = smtp_starttls(ports.smtp, pki, "fort", None)  # type: ignore[arg-type]
        if i % 5 == 0:
            s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: load\r\n\r\nduring reloads\r\n")
        else:
            assert s.mail("bob@example.test")[0] == 250
            assert s.rcpt("alice@example.test")[0] == 250
            assert s.rset()[0] == 250
        s.quit()

    def imaps(_: int) -> None:
        m = imaplib.IMAP4_SSL("127.0.0.1", ports.imaps, ssl_context=ctx, timeout=15)  # type: ignore[arg-type]
        m.login("alice@example.test", "alicepw")
        assert m.noop()[0] == "OK"
        m.logout()

    def https(i: int) -> None:
        raw = socket.create_connection(("127.0.0.1", https_port), timeout=15)
        conn = http.client.HTTPSConnection("mss-msg.mssante.fr", https_port, timeout=15)
        conn.sock = ctx.wrap_socket(raw, server_hostname="mss-msg.mssante.fr")
        conn.request("GET", f"/reload-load/{i}")
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        resp.read()
        conn.close()

    clients = Clients()
    for name, fn in (("imap", imap), ("smtp", smtp), ("imaps", imaps), ("https", https)):
        clients.start(name, fn)
    valid = [cfg, with_flow_cert(cfg, pki, "2bis", "igcsante")]
    expected = {0: IMAP_2BIS, 1: IMAP_SANTE}
    invalid = with_flow_cert(cfg, pki, "2bis", "igcsante")
    invalid["flows"]["2bis"]["key"] = str(pki.servers["2bis"].key)    # a key that does not match
    started = time.monotonic()
    current, generation, refused, accepted = 0, 1, 0, 0
    try:
        for n in range(1, RELOADS + 1):
            assert time.monotonic() - started < WALL_LIMIT, f"only {n} reloads in {WALL_LIMIT}s"
            if n % INVALID_EVERY == 0:
                rewrite(proxy, invalid)
                ev = reload_and_wait(proxy, "reload_failed")
                assert ev["generation"] == generation
                assert any(f"{proxy.config}:" in e and "flows.2bis.key" in e for e in ev["errors"]), ev
                refused += 1
            else:
                current = 1 - current
                rewrite(proxy, valid[current])
                ev = reload_and_wait(proxy)
                generation += 1
                accepted += 1
                assert ev["generation"] == generation
            # The next new connection sees the config in force (the old one after a refusal).
            assert served_cn(pki, ports.imaps, starttls=None) == expected[current], f"reload {n}"
    finally:
        clients.join()
    elapsed = time.monotonic() - started
    print(f"{RELOADS} reloads ({refused} refused) in {elapsed:.1f}s; client rounds ok: {clients.ok}")
    assert (accepted, refused) == (RELOADS - RELOADS // INVALID_EVERY, RELOADS // INVALID_EVERY)
    assert clients.failures == [], clients.failures[:10]
    assert all(clients.ok.get(n, 0) >= 5 for n in ("imap", "smtp", "imaps", "https")), clients.ok
    # The proxy's own view: no client connection ended badly (resets, internal errors, refusals).
    time.sleep(0.5)
    bad = [e for e in proxy.connection_events() if e["outcome"] == "refused" or e["reason"] == "client_reset"]
    assert bad == [], bad[:5]
