"""The core proxy with real clients and real backends: Dovecot (IMAP) and Postfix (SMTP) on loopback.

Every test reads the proxy's own ``connection`` event, so a refusal is proven to be the intended
one (stable ``reason``), not just "some error".
"""

from __future__ import annotations

import copy
import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sniproxy.cpus import available_cpus
from sniproxy.demo.conf import DemoPorts, config_dict
from sniproxy.demo.pki import TestPki
from tests.conftest import free_ports
from tests.integration.clients import (
    client_context,
    imap_starttls,
    read_all,
    s_client,
    server_roots,
    smtp_starttls,
    tls_connect,
)
from tests.integration.conftest import private_dovecot
from tests.integration.peers import Dovecot, Postfix
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration

IMAP_2BIS, IMAP_SANTE = "frontimap.mssante.fr", "frontimap-igcsante.mssante.fr"
SMTP_2BIS, SMTP_SANTE = "frontsmtp.mssante.fr", "frontsmtp-igcsante.mssante.fr"
CLIENT_ERRORS = (ssl.SSLError, OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, smtplib.SMTPException, EOFError)

StartProxy = Callable[[dict[str, Any]], ProxyProcess]


def _ports(dovecot: Dovecot, postfix: Postfix | None) -> DemoPorts:
    imap, smtp, imaps, smtps = free_ports(4)
    return DemoPorts(imap=imap, smtp=smtp, imaps=imaps, smtps=smtps,
                     imap_backend=f"127.0.0.1:{dovecot.imap_port}",
                     smtp_backend=f"127.0.0.1:{postfix.smtp_port if postfix else 9}")


@pytest.fixture
def biflux(pki: TestPki, dovecot: Dovecot, postfix: Postfix,
           start_proxy: StartProxy) -> tuple[ProxyProcess, DemoPorts]:
    """The bi-flux config of conf/mssante-bi-flux.yaml, on the test PKI, in front of Dovecot and Postfix."""
    ports = _ports(dovecot, postfix)
    return start_proxy(config_dict(pki, ports)), ports


def _peer_cn(sock: Any) -> str:
    der = sock.getpeercert(binary_form=True)
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _imap_try(port: int, pki: TestPki, card: str | None, sni: str | None) -> str:
    """Log in to Dovecot through the proxy; return the server certificate CN, or raise."""
    m = imap_starttls(port, pki, card, sni)
    try:
        cn = _peer_cn(m.sock)
        m.login("alice@example.test", "alicepw")
        typ, _ = m.select("INBOX")
        assert typ == "OK"
        m.logout()
    finally:
        m.shutdown() if m.state != "LOGOUT" else None
    return cn


def _outcomes(proxy: ProxyProcess) -> list[tuple[Any, ...]]:
    """(reason, phase, detail) of every connection so far: what a failure message should show."""
    return [(e["reason"], e["phase"], e.get("detail")) for e in proxy.connection_events()]


def _served(proxy: ProxyProcess, client: Callable[[], object]) -> None:
    """Run a client that must succeed; on failure show what the proxy logged, to tell why."""
    try:
        client()
    except CLIENT_ERRORS as exc:
        time.sleep(0.5)
        pytest.fail(f"client failed: {exc!r}; proxy events: {proxy.connection_events()}")


# ---------------------------------------------------------------- flows by SNI, cards per flow

@pytest.mark.parametrize(("sni", "flow", "cert_cn"), [
    (None, "2bis", IMAP_2BIS),
    (IMAP_2BIS, "2bis", IMAP_2BIS),
    (IMAP_SANTE, "igcsante", IMAP_SANTE),
    ("unknown.example.org", "2bis", IMAP_2BIS),
])
def test_imap_flow_chosen_by_sni(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki,
                                  sni: str | None, flow: str, cert_cn: str) -> None:
    proxy, ports = biflux
    assert ports.imap is not None
    cns: list[str] = []
    _served(proxy, lambda: cns.append(_imap_try(ports.imap, pki, "fort", sni)))  # type: ignore[arg-type]
    assert cns == [cert_cn]
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["flow"] == flow and ev["reason"] == "ok" and ev["sni"] == sni
    assert ev["identity"]["idnat_ps"] == "810009876543"


@pytest.mark.parametrize("sni", [IMAP_2BIS, IMAP_SANTE])
@pytest.mark.parametrize(("card", "authority"), [("cps-2ter", "igc-cps-2ter"), ("fort", "igc-sante-fort-pp"),
                                                 ("fort-liberal", "igc-sante-fort-pp")])
def test_2ter_and_fort_cards_accepted_on_both_flows(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki,
                                                     sni: str, card: str, authority: str) -> None:
    proxy, ports = biflux
    assert ports.imap is not None
    _served(proxy, lambda: _imap_try(ports.imap, pki, card, sni))  # type: ignore[arg-type]
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok" and ev["authority"] == authority


@pytest.mark.parametrize(("card", "reason"), [
    ("standard-cpe", "unknown_ca"),         # Standard Personnes present but off
    ("test-fort", "test_chain"),
    ("test-category", "test_card"),
    ("expired", "expired"),
    ("not-yet-valid", "not_yet_valid"),
    ("wrong-eku", "wrong_usage"),
    ("wrong-ku", "wrong_usage"),
    ("unknown-ca", "unknown_ca"),
    ("self-signed", "self_signed"),
    (None, "no_client_cert"),
])
@pytest.mark.parametrize("sni", [IMAP_2BIS, IMAP_SANTE])
def test_bad_cards_refused_with_reason(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki,
                                       dovecot: Dovecot, sni: str, card: str | None, reason: str) -> None:
    proxy, ports = biflux
    assert ports.imap is not None
    before = dovecot.read_log().count("imap-login")
    with pytest.raises(CLIENT_ERRORS):
        _imap_try(ports.imap, pki, card, sni)
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == reason, ev
    assert ev["outcome"] == "refused" and ev["phase"] == "handshake"
    assert "Traceback" not in proxy.log_text()
    assert dovecot.read_log().count("imap-login") == before  # the backend never saw the client


def test_standard_card_accepted_where_enabled(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    ports = _ports(dovecot, None)
    proxy = start_proxy(config_dict(pki, ports, standard_enabled=True))
    assert ports.imap is not None
    _imap_try(ports.imap, pki, "standard-cpe", IMAP_SANTE)
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok" and ev["authority"] == "igc-sante-standard-pp"
    assert ev["identity"]["card_type_name"] == "CPE"


def test_test_profile_trusts_only_test_chains(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    ports = _ports(dovecot, None)
    proxy = start_proxy(config_dict(pki, ports, profile="test"))
    assert ports.imap is not None
    _imap_try(ports.imap, pki, "test-fort", IMAP_SANTE)
    assert proxy.wait_event(lambda e: e["listener"] == "imap")["reason"] == "ok"
    proxy.clear()
    with pytest.raises(CLIENT_ERRORS):
        _imap_try(ports.imap, pki, "fort", IMAP_SANTE)
    assert proxy.wait_event(lambda e: e["listener"] == "imap")["reason"] == "production_chain"


# ---------------------------------------------------------------- per-flow enforcement (the SNI trap)

def test_each_flow_enforces_its_own_authorities_and_mode(pki: TestPki, dovecot: Dovecot,
                                                         start_proxy: StartProxy) -> None:
    """Flow A: 2TER cards only, required. Flow B: Fort cards only, optional. One listener, chosen by SNI."""
    ports = _ports(dovecot, None)
    cfg = config_dict(pki, ports)
    cfg["flows"]["a"] = dict(cfg["flows"]["2bis"], authorities=["igc-cps-2ter"], client_auth="required")
    cfg["flows"]["b"] = dict(cfg["flows"]["igcsante"], authorities=["igc-sante-fort-pp"], client_auth="optional")
    imap = next(ls for ls in cfg["listeners"] if ls["name"] == "imap")
    imap["sni"] = {IMAP_2BIS: "a", IMAP_SANTE: "b"}
    imap["default_flow"] = "a"
    cfg["listeners"] = [imap]
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    cases = [("fort", IMAP_2BIS, "unknown_ca"), ("fort", IMAP_SANTE, "ok"),
             ("cps-2ter", IMAP_SANTE, "unknown_ca"), ("cps-2ter", IMAP_2BIS, "ok"),
             (None, IMAP_2BIS, "no_client_cert"), (None, IMAP_SANTE, "ok")]
    for card, sni, reason in cases:
        proxy.clear()
        try:
            _imap_try(ports.imap, pki, card, sni)
        except CLIENT_ERRORS:
            assert reason != "ok", (card, sni)
        ev = proxy.wait_event(lambda e: e["listener"] == "imap")
        assert ev["reason"] == reason, (card, sni, ev)
        assert ev["flow"] == ("a" if sni == IMAP_2BIS else "b")
    # The CertificateRequest names only the flow's own CAs.
    out_a = s_client(ports.imap, starttls="imap", sni=IMAP_2BIS)
    out_b = s_client(ports.imap, starttls="imap", sni=IMAP_SANTE)
    assert "Acceptable client certificate CA names" in out_a
    assert "AC-CLASSE-1" in out_a and "FORT PERSONNES" not in out_a
    assert "FORT PERSONNES" in out_b and "AC-CLASSE-1" not in out_b


# ---------------------------------------------------------------- real clients: openssl, curl, smtplib

@pytest.mark.parametrize(("sni", "cn"), [(None, IMAP_2BIS), (IMAP_SANTE, IMAP_SANTE)])
def test_openssl_s_client_starttls_imap(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki,
                                        sni: str | None, cn: str) -> None:
    proxy, ports = biflux
    assert ports.imap is not None
    card = pki.cards["fort"]
    out = s_client(ports.imap, starttls="imap", sni=sni, cert=card.chain, key=card.key,
                   cafile=server_roots(pki), stdin=b"a CAPABILITY\r\na LOGOUT\r\n",
                   extra=["-ign_eof"])
    assert f"CN = {cn}" in out or f"CN={cn}" in out, out
    assert "Verify return code: 0 (ok)" in out
    assert "Acceptable client certificate CA names" in out
    assert "AC IGC-SANTE FORT PERSONNES" in out and "AC-CLASSE-1" in out
    assert proxy.wait_event(lambda e: e["listener"] == "imap")["reason"] == "ok"


def test_openssl_s_client_starttls_smtp(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki) -> None:
    proxy, ports = biflux
    assert ports.smtp is not None
    card = pki.cards["cps-2ter"]
    out = s_client(ports.smtp, starttls="smtp", sni=SMTP_SANTE, cert=card.chain, key=card.key,
                   cafile=server_roots(pki), stdin=b"EHLO client.test\r\nQUIT\r\n", extra=["-ign_eof"])
    assert "Verify return code: 0 (ok)" in out
    ev = proxy.wait_event(lambda e: e["listener"] == "smtp")
    assert ev["reason"] == "ok" and ev["flow"] == "igcsante", ev


def test_curl_imap_with_card(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki) -> None:
    import subprocess

    proxy, ports = biflux
    card = pki.cards["fort"]
    r = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "--max-time", "20",
         "--connect-to", f"{IMAP_SANTE}:{ports.imap}:127.0.0.1:{ports.imap}",
         "--cacert", str(server_roots(pki)), "--cert", str(card.chain), "--key", str(card.key),
         "-u", "alice@example.test:alicepw", f"imap://{IMAP_SANTE}:{ports.imap}/"],
        capture_output=True, text=True, timeout=30)
    time.sleep(0.3)
    assert r.returncode == 0, f"{r.stderr} {_outcomes(proxy)}"
    assert "INBOX" in r.stdout
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok" and ev["flow"] == "igcsante" and ev["sni"] == IMAP_SANTE


def test_smtp_submission_reaches_dovecot_and_reads_back(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki,
                                                        postfix: Postfix) -> None:
    proxy, ports = biflux
    assert ports.smtp is not None and ports.imap is not None
    subject = f"through sniproxy {time.time_ns()}"

    def submit() -> None:
        s = smtp_starttls(ports.smtp, pki, "fort", SMTP_SANTE)  # type: ignore[arg-type]
        assert not s.has_extn("starttls"), s.esmtp_features
        s.sendmail("bob@example.test", ["alice@example.test"], f"Subject: {subject}\r\n\r\nhello\r\n".encode())
        s.quit()

    _served(proxy, submit)
    assert proxy.wait_event(lambda e: e["listener"] == "smtp")["reason"] == "ok"
    deadline = time.monotonic() + 15
    found = False
    while not found and time.monotonic() < deadline:
        m = imap_starttls(ports.imap, pki, "cps-2ter", IMAP_2BIS)
        m.login("alice@example.test", "alicepw")
        m.select("INBOX")
        _, data = m.search(None, "SUBJECT", f'"{subject}"')
        found = bool(data[0])
        m.logout()
        if not found:
            time.sleep(0.3)
    assert found, postfix.read_log()[-2000:]


def test_implicit_tls_imaps_and_smtps(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki) -> None:
    proxy, ports = biflux
    assert ports.imaps is not None and ports.smtps is not None
    m = imaplib.IMAP4_SSL("127.0.0.1", ports.imaps, ssl_context=client_context(pki, "fort"), timeout=10)
    assert "STARTTLS" not in m.capabilities
    m.login("alice@example.test", "alicepw")
    m.logout()
    assert proxy.wait_event(lambda e: e["listener"] == "imaps")["reason"] == "ok"
    s = smtplib.SMTP_SSL("127.0.0.1", ports.smtps, context=client_context(pki, "fort"), timeout=10)
    code, _ = s.ehlo("client.test")
    assert code == 250 and not s.has_extn("starttls")
    s.quit()
    assert proxy.wait_event(lambda e: e["listener"] == "smtps")["reason"] == "ok"


# ---------------------------------------------------------------- STARTTLS injection, bad input, backend down

def _raw(port: int, greeting_lines: int = 1) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    buf = b""
    while buf.count(b"\n") < greeting_lines:
        buf += sock.recv(4096)
    return sock


@pytest.mark.parametrize(("listener", "payload"), [
    ("imap", b"a STARTTLS\r\nb LOGIN alice@example.test alicepw\r\n"),
    ("smtp", b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@example.test>\r\n"),
])
def test_starttls_injection_refused(biflux: tuple[ProxyProcess, DemoPorts], dovecot: Dovecot,
                                    listener: str, payload: bytes) -> None:
    proxy, ports = biflux
    port = ports.imap if listener == "imap" else ports.smtp
    assert port is not None
    before = dovecot.read_log().count("imap-login")
    with _raw(port) as sock:
        sock.sendall(payload)
        answer = read_all(sock)
    assert b"Begin TLS" not in answer and b"220 2.0.0" not in answer
    ev = proxy.wait_event(lambda e: e["listener"] == listener)
    assert ev["reason"] == "starttls_injection" and ev["phase"] == "pretls"
    assert dovecot.read_log().count("imap-login") == before


def test_pretls_dialog_refuses_login_and_mail(biflux: tuple[ProxyProcess, DemoPorts]) -> None:
    _, ports = biflux
    assert ports.imap is not None and ports.smtp is not None
    with _raw(ports.imap) as sock:
        sock.sendall(b"a LOGIN alice@example.test alicepw\r\nb LOGOUT\r\n")
        answer = read_all(sock)
    assert b"a NO [PRIVACYREQUIRED]" in answer and b"b OK" in answer
    with _raw(ports.smtp) as sock:
        sock.sendall(b"EHLO x\r\nMAIL FROM:<a@example.test>\r\nQUIT\r\n")
        answer = read_all(sock)
    assert b"530 5.7.0 Must issue a STARTTLS command first" in answer
    assert b"STARTTLS" in answer and b"AUTH" not in answer


def test_garbage_and_long_lines_close_with_reason(biflux: tuple[ProxyProcess, DemoPorts]) -> None:
    proxy, ports = biflux
    assert ports.imaps is not None and ports.imap is not None
    with socket.create_connection(("127.0.0.1", ports.imaps), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_all(sock)
    assert proxy.wait_event(lambda e: e["listener"] == "imaps")["reason"] == "bad_client_hello"
    with _raw(ports.imap) as sock:
        try:
            sock.sendall(b"a" * 65536)
        except OSError:
            pass
        read_all(sock)
    assert proxy.wait_event(lambda e: e["listener"] == "imap")["reason"] == "line_too_long"
    assert "Traceback" not in proxy.log_text()


def test_backend_down_gets_protocol_error(pki: TestPki, start_proxy: StartProxy) -> None:
    imap, smtp = free_ports(2)
    dead = free_ports(1)[0]
    ports = DemoPorts(imap=imap, smtp=smtp, imap_backend=f"127.0.0.1:{dead}", smtp_backend=f"127.0.0.1:{dead}")
    proxy = start_proxy(config_dict(pki, ports))
    raw = socket.create_connection(("127.0.0.1", imap), timeout=10)
    raw.recv(4096)
    raw.sendall(b"a STARTTLS\r\n")
    assert b"a OK" in raw.recv(4096)
    with client_context(pki, "fort").wrap_socket(raw, server_hostname=IMAP_SANTE) as tls:
        assert read_all(tls).startswith(b"* BYE [UNAVAILABLE]")
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "backend_unavailable" and "Connection refused" in ev["detail"]
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as s:
        s.ehlo("client.test")
        s.starttls(context=client_context(pki, "fort"))
        code, text = s.ehlo("client.test")
    assert code == 421 and b"4.3.0" in text
    ev = proxy.wait_event(lambda e: e["listener"] == "smtp")
    assert ev["reason"] == "backend_unavailable"


def test_unknown_sni_rejected_when_configured(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    ports = _ports(dovecot, None)
    cfg = config_dict(pki, ports)
    for ls in cfg["listeners"]:
        ls["unknown_sni"] = "reject"
    proxy = start_proxy(cfg)
    assert ports.imaps is not None
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_connect(ports.imaps, pki, "fort", "other.example.org")
    assert proxy.wait_event(lambda e: e["listener"] == "imaps")["reason"] == "unknown_sni"
    proxy.clear()
    s = tls_connect(ports.imaps, pki, "fort", None)  # no SNI still gets the legacy flow
    assert s.recv(100).startswith(b"* OK")
    s.close()
    assert proxy.wait_event(lambda e: e["listener"] == "imaps")["flow"] == "2bis"


def test_ipv6_listener(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    port = free_ports(1, "::1")[0]
    ports = DemoPorts(imap=port, host="::1", imap_backend=f"127.0.0.1:{dovecot.imap_port}")
    proxy = start_proxy(config_dict(pki, ports))
    cn = _imap_try_host("::1", port, pki)
    assert cn == IMAP_SANTE
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok" and ev["peer"].startswith("::1")


def _imap_try_host(host: str, port: int, pki: TestPki) -> str:
    m = imap_starttls(port, pki, "fort", IMAP_SANTE, host=host)
    cn = _peer_cn(m.sock)
    m.login("alice@example.test", "alicepw")
    m.logout()
    return cn


def test_workers_auto_serves(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    ports = _ports(dovecot, None)
    cfg = copy.deepcopy(config_dict(pki, ports))
    cfg["workers"] = "auto"
    cfg["listeners"] = [ls for ls in cfg["listeners"] if ls["name"] == "imap"]
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    for _ in range(4):
        _served(proxy, lambda: _imap_try(ports.imap, pki, "fort", IMAP_SANTE))  # type: ignore[arg-type]
    assert len([e for e in proxy.connection_events() if e["reason"] == "ok"]) >= 1
    # One "ready" per worker, as many workers as CPUs; the listener serves as soon as the first worker
    # is ready, so the others may still be starting on a loaded machine: wait for them, bounded.
    workers = available_cpus()
    deadline = time.monotonic() + 30
    while proxy.log_text().count('"event": "ready"') < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proxy.log_text().count('"event": "ready"') == workers, proxy.log_text()[-3000:]


def test_curl_smtp_with_card(biflux: tuple[ProxyProcess, DemoPorts], pki: TestPki, tmp_path: Any) -> None:
    import subprocess

    proxy, ports = biflux
    card = pki.cards["cps-2ter"]
    mail = tmp_path / "mail.txt"
    mail.write_text("Subject: curl through sniproxy\r\n\r\nhello\r\n")
    r = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "--max-time", "20",
         "--connect-to", f"{SMTP_2BIS}:{ports.smtp}:127.0.0.1:{ports.smtp}",
         "--cacert", str(server_roots(pki)), "--cert", str(card.chain), "--key", str(card.key),
         "--mail-from", "bob@example.test", "--mail-rcpt", "alice@example.test", "-T", str(mail),
         f"smtp://{SMTP_2BIS}:{ports.smtp}/client.test"],
        capture_output=True, text=True, timeout=30)
    time.sleep(0.3)
    assert r.returncode == 0, f"{r.stderr} {_outcomes(proxy)}"
    ev = proxy.wait_event(lambda e: e["listener"] == "smtp")
    assert ev["reason"] == "ok" and ev["flow"] == "2bis" and ev["identity"]["idnat_ps"] == "810001234567"


def test_commands_sent_before_client_eof_still_reach_the_backend(biflux: tuple[ProxyProcess, DemoPorts],
                                                                 pki: TestPki, dovecot: Dovecot) -> None:
    """A client that writes its commands and half-closes at once (a script, s_client < file) is served."""
    proxy, ports = biflux
    assert ports.imap is not None
    raw = _raw(ports.imap)
    raw.sendall(b"a STARTTLS\r\n")
    assert b"a OK" in raw.recv(4096)
    with client_context(pki, "fort").wrap_socket(raw, server_hostname=IMAP_SANTE) as tls:
        tls.sendall(b"b LOGIN alice@example.test alicepw\r\nc LOGOUT\r\n")
        # TCP FIN right behind the commands, before the backend is ready (base method: keep TLS reading)
        socket.socket.shutdown(tls, socket.SHUT_WR)
        answer = read_all(tls)
    assert b"b OK" in answer and b"c OK" in answer, answer
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok", ev


@pytest.fixture
def own_dovecot() -> Iterator[Dovecot]:
    """A Dovecot of this test alone: it is stopped in the middle of the test."""
    yield from private_dovecot()


def test_backend_stopping_without_bye_still_says_goodbye(pki: TestPki, own_dovecot: Dovecot,
                                                         start_proxy: StartProxy) -> None:
    """Dovecot closes IDLE sessions at shutdown without a BYE; the client gets one from the proxy.

    Found by the soak (issue 17): sessions held in IDLE across a Dovecot restart ended in a bare EOF."""
    (imaps,) = free_ports(1)
    start_proxy(config_dict(pki, DemoPorts(imaps=imaps, imap_backend=f"127.0.0.1:{own_dovecot.imap_port}")))
    with tls_connect(imaps, pki, "cps-2ter", IMAP_2BIS) as s:
        s.settimeout(10)
        assert s.recv(4096).startswith(b"* OK")
        s.sendall(b"a LOGIN alice@example.test alicepw\r\n")
        got = b""
        while b"a OK" not in got:
            got += s.recv(4096)
        s.sendall(b"b SELECT INBOX\r\nc IDLE\r\n")
        while b"+ idling" not in got:
            got += s.recv(4096)
        own_dovecot.halt()
        tail = read_all(s)
    assert tail.startswith(b"* BYE [UNAVAILABLE]"), tail
    # a backend that says BYE itself (LOGOUT) gets no second one
    own_dovecot.restart()
    with tls_connect(imaps, pki, "cps-2ter", IMAP_2BIS) as s:
        s.settimeout(10)
        s.recv(4096)
        s.sendall(b"a LOGIN alice@example.test alicepw\r\nb LOGOUT\r\n")
        tail = read_all(s)
    assert tail.count(b"* BYE") == 1 and b"b OK" in tail, tail
