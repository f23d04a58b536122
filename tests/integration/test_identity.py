"""Issue 4: the verified card identity reaches unchanged Dovecot 2.3 and Postfix 3.7 backends.

Real peers (private Dovecot and Postfix from ``peers.py``), real clients (imaplib, smtplib, raw sockets
speaking the PROXY protocol), the real ``sniproxy run``. Clients connect from a loopback address other
than 127.0.0.1 (the proxy's own source address towards the backends), so a backend log naming that
address proves the identity preamble carried it.
"""

from __future__ import annotations

import base64
import imaplib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sniproxy.demo.conf import DemoPorts, config_dict
from sniproxy.demo.pki import TestPki
from sniproxy.proto.proxy_encode import encode_v2
from sniproxy.proto.proxy_protocol import ProxyHeaderParser, parse_ssl_tlv
from sniproxy.proto.proxy_wire import (
    MAX_HEADER,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    V2_SIGNATURE,
    ProxyResult,
)
from tests.conftest import free_ports
from tests.integration.clients import client_context, read_all
from tests.integration.conftest import private_dovecot
from tests.integration.peers import Dovecot, Postfix
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration

IMAP_SANTE, SMTP_SANTE = "frontimap-igcsante.mssante.fr", "frontsmtp-igcsante.mssante.fr"
CARD_CN = "810001234567"            # CN (IdNat_PS) of the "cps-2ter" test card, a user of the test Dovecot
CLIENT_SRC = "127.0.0.5"            # the test clients' source address (the proxy's is 127.0.0.1)
BALANCER_SRC = "127.0.0.2"          # a trusted L4 load balancer
StartProxy = Callable[[dict[str, Any]], ProxyProcess]
CLIENT_ERRORS = (ssl.SSLError, OSError, imaplib.IMAP4.error, imaplib.IMAP4.abort, smtplib.SMTPException, EOFError)


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def dovecot_cn() -> Iterator[Dovecot]:
    """A Dovecot set up for "EXTERNAL from the proxied CN": auth_ssl_username_from_cert, an EXTERNAL-only passdb."""
    yield from private_dovecot(external_users=(CARD_CN,))


@pytest.fixture
def login_files(tmp_path: Path, dovecot: Dovecot) -> dict[str, str]:
    """The mapping file (card IdNat_PS -> mailboxes) and the master password file of proxy-side logins."""
    mapping = tmp_path / "mailboxes.yaml"
    mapping.write_text(yaml.safe_dump({CARD_CN: ["alice@example.test"]}))
    secret = tmp_path / "master.pw"
    secret.write_text(dovecot.master_users["proxy-master"] + "\n")
    secret.chmod(0o600)
    return {"mapping": str(mapping), "master_user": "proxy-master", "master_password_file": str(secret)}


def _config(pki: TestPki, *, imap_backend: Any = None, smtp_backend: Any = None, imaps_backend: Any = None,
            proxy_from: list[str] | None = None) -> tuple[dict[str, Any], DemoPorts]:
    imap, smtp, imaps = free_ports(3)
    ports = DemoPorts(imap=imap if imap_backend else None, smtp=smtp if smtp_backend else None,
                      imaps=imaps if imaps_backend else None)
    cfg = config_dict(pki, ports)
    for ls in cfg["listeners"]:
        ls["backend"] = {"imap": imap_backend, "smtp": smtp_backend, "imaps": imaps_backend}[ls["name"]]
        if proxy_from is not None:
            ls["proxy_protocol_from"] = proxy_from
    return cfg, ports


class _Imap(imaplib.IMAP4):
    """imaplib from a chosen source address, optionally writing a PROXY header first (a load balancer)."""

    def __init__(self, port: int, src: str, preamble: bytes = b"") -> None:
        self._src, self._preamble = src, preamble
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._src, 0))
        if self._preamble:
            sock.sendall(self._preamble)
        return sock


def _imap(port: int, pki: TestPki, card: str | None, *, src: str = CLIENT_SRC, preamble: bytes = b"",
          sni: str = IMAP_SANTE) -> imaplib.IMAP4:
    m = _Imap(port, src, preamble)
    m.host = sni  # imaplib passes self.host as server_hostname: the SNI
    m.starttls(ssl_context=client_context(pki, card))
    return m


def _external(m: imaplib.IMAP4, authzid: str = "") -> tuple[str, Any]:
    # imaplib base64-encodes what the callback returns; b"" is the empty response (no authzid)
    return m.authenticate("EXTERNAL", lambda _challenge: authzid.encode())


def _logins(d: Dovecot) -> list[str]:
    return [line for line in d.read_log().splitlines() if "imap-login: Info: Login:" in line]


# ------------------------------------------------------------------------------------------ proxy-v2 out

def test_proxy_v2_external_login_with_card_cn(pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy) -> None:
    """Dovecot logs the card holder in by EXTERNAL with the CN of the PROXY v2 header, and sees the real client."""
    cfg, ports = _config(pki, imap_backend={"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}",
                                            "identity": "proxy-v2"})
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    assert "AUTH=EXTERNAL" in m.capabilities
    typ, _ = _external(m)
    assert typ == "OK"
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    m.logout()
    assert dovecot_cn.wait_for_log(f"user=<{CARD_CN}>, method=EXTERNAL, rip={CLIENT_SRC}"), \
        dovecot_cn.read_log()[-2000:]
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok" and ev["peer"].startswith(CLIENT_SRC + ":")


def test_proxy_v2_grants_nothing_by_itself(pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy) -> None:
    """A plain LOGIN with a wrong password still fails at Dovecot, card or not."""
    cfg, ports = _config(pki, imap_backend={"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}",
                                            "identity": "proxy-v2"})
    start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(CARD_CN, "wrong-password")
    m.logout()
    failed = f"user=<{CARD_CN}>, method=PLAIN, rip={CLIENT_SRC}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
            "auth failed" in line and failed in line for line in dovecot_cn.read_log().splitlines()):
        time.sleep(0.05)
    assert any("auth failed" in line and failed in line for line in dovecot_cn.read_log().splitlines()), \
        dovecot_cn.read_log()[-2000:]
    assert not any(f"user=<{CARD_CN}>, method=PLAIN" in line for line in _logins(dovecot_cn))


class _CaptureBackend:
    """A backend that records the first bytes of each connection (the PROXY header) and greets like IMAP."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers: list[ProxyResult] = []
        self.raw: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                parser = ProxyHeaderParser()
                data = b""
                result = None
                while result is None:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    result = parser.feed(chunk)
                self.raw.append(data)
                if result is not None:
                    self.headers.append(result)
                    conn.sendall(b"* OK ready\r\n")
                    try:
                        conn.recv(4096)
                        conn.sendall(b"* BYE bye\r\n")
                    except OSError:
                        pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("identity_tlvs", [False, True])
def test_proxy_v2_header_layout(pki: TestPki, start_proxy: StartProxy, identity_tlvs: bool) -> None:
    """The header a real proxy sends: client and listener addresses, SSL flags, verify 0, CN, SNI, < 1500 bytes."""
    backend = _CaptureBackend()
    try:
        cfg, ports = _config(pki, imap_backend={"address": f"127.0.0.1:{backend.port}", "identity": "proxy-v2",
                                                "proxy_v2": {"identity_tlvs": identity_tlvs, "crc32c": True}})
        start_proxy(cfg)
        assert ports.imap is not None
        with socket.create_connection(("127.0.0.1", ports.imap), timeout=10,
                                      source_address=(CLIENT_SRC, 0)) as raw:
            raw.recv(4096)
            raw.sendall(b"a STARTTLS\r\n")
            assert raw.recv(4096).startswith(b"a OK")
            with client_context(pki, "cps-2ter").wrap_socket(raw, server_hostname=IMAP_SANTE) as tls:
                tls.sendall(b"b NOOP\r\n")
                read_all(tls)
        deadline = time.monotonic() + 5
        while not backend.headers and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        backend.close()
    assert backend.headers, backend.raw
    h = backend.headers[0]
    assert h.version == 2 and h.command == "PROXY"
    assert h.src is not None and h.src[0] == CLIENT_SRC
    assert h.dst == ("127.0.0.1", ports.imap)
    assert h.consumed <= MAX_HEADER
    ssl_info = parse_ssl_tlv(h.tlv(PP2_TYPE_SSL) or b"")
    assert ssl_info["client_flags"] == PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    assert ssl_info["verify"] == 0
    assert ssl_info["cn"] == CARD_CN
    assert ssl_info["version"] in ("TLSv1.2", "TLSv1.3") and ssl_info["cipher"]
    assert ssl_info["sig_alg"] == "RSA-SHA256" and (ssl_info["key_alg"] or "").startswith("RSA")
    assert h.tlv(PP2_TYPE_AUTHORITY) == IMAP_SANTE.encode()
    assert (h.tlv(0xE0) == CARD_CN.encode()) is identity_tlvs


# ------------------------------------------------------------------------------------------ PROXY in

def _v1(src: str, port: int, dst_port: int) -> bytes:
    return f"PROXY TCP4 {src} 127.0.0.1 {port} {dst_port}\r\n".encode()


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_header_from_trusted_balancer_gives_client_address(
        pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy, version: int) -> None:
    cfg, ports = _config(pki, imap_backend={"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}",
                                            "identity": "proxy-v2"}, proxy_from=[f"{BALANCER_SRC}/32"])
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    client = f"192.0.2.{10 + version}"
    header = (_v1(client, 40000 + version, ports.imap) if version == 1 else
              encode_v2(command="PROXY", src=(client, 40000 + version), dst=("127.0.0.1", ports.imap)))
    m = _imap(ports.imap, pki, "cps-2ter", src=BALANCER_SRC, preamble=header)
    typ, _ = _external(m)
    assert typ == "OK"
    m.logout()
    assert dovecot_cn.wait_for_log(f"user=<{CARD_CN}>, method=EXTERNAL, rip={client}"), dovecot_cn.read_log()[-2000:]
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "ok" and ev["peer"] == f"{client}:{40000 + version}"
    assert ev["via"].startswith(BALANCER_SRC + ":")


@pytest.mark.parametrize(("listener", "header"), [
    ("imap", b"PROXY TCP4 192.0.2.66 127.0.0.1 40000 143\r\n"),
    ("imaps", encode_v2(command="PROXY", src=("192.0.2.66", 40000), dst=("127.0.0.1", 993))),
])
def test_proxy_header_from_untrusted_address_refused(pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy,
                                                     listener: str, header: bytes) -> None:
    backend = {"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}", "identity": "proxy-v2"}
    cfg, ports = _config(pki, imap_backend=backend, imaps_backend=backend, proxy_from=[f"{BALANCER_SRC}/32"])
    proxy = start_proxy(cfg)
    port = ports.imap if listener == "imap" else ports.imaps
    assert port is not None
    before = dovecot_cn.read_log().count("imap-login")
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT_SRC, 0)) as sock:
        if listener == "imap":
            assert sock.recv(4096).startswith(b"* OK")   # the proxy's own pre-TLS greeting
        sock.sendall(header)
        read_all(sock)
    ev = proxy.wait_event(lambda e: e["listener"] == listener)
    assert ev["reason"] == "untrusted_proxy_header" and ev["outcome"] == "refused", ev
    assert ev["peer"].startswith(CLIENT_SRC + ":")
    time.sleep(0.3)
    assert dovecot_cn.read_log().count("imap-login") == before   # no backend connection at all


def test_trusted_balancer_without_header_refused(pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = _config(pki, imap_backend={"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}",
                                            "identity": "proxy-v2"}, proxy_from=[f"{BALANCER_SRC}/32"])
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    with socket.create_connection(("127.0.0.1", ports.imap), timeout=10, source_address=(BALANCER_SRC, 0)) as sock:
        sock.sendall(b"a CAPABILITY\r\n")
        assert read_all(sock) == b""   # not even a greeting: the balancer must speak first
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["reason"] == "bad_proxy_header" and ev["phase"] == "proxy_header", ev


# ------------------------------------------------------------------------------------------ SMTP XCLIENT

def _smtp(port: int, pki: TestPki, card: str) -> smtplib.SMTP:
    s = smtplib.SMTP(timeout=10, source_address=(CLIENT_SRC, 0))
    s.connect("127.0.0.1", port)
    s.ehlo("client.test")
    s._host = SMTP_SANTE  # type: ignore[attr-defined]  # smtplib passes self._host as server_hostname
    s.starttls(context=client_context(pki, card))
    s.ehlo("client.test")
    return s


def test_smtp_xclient_login_delivers_to_dovecot_and_reads_back(
        pki: TestPki, dovecot: Dovecot, postfix: Postfix, start_proxy: StartProxy,
        login_files: dict[str, str]) -> None:
    """AUTH EXTERNAL at the proxy -> XCLIENT LOGIN= at Postfix -> LMTP to Dovecot -> read over IMAP via the proxy."""
    smtp_backend = {"address": f"127.0.0.1:{postfix.smtp_port}", "identity": "xclient",
                    "login": {"mapping": login_files["mapping"]}}
    cfg, ports = _config(pki, smtp_backend=smtp_backend, imap_backend=f"127.0.0.1:{dovecot.imap_port}")
    proxy = start_proxy(cfg)
    assert ports.smtp is not None and ports.imap is not None
    subject = f"xclient {time.time_ns()}"
    s = _smtp(ports.smtp, pki, "cps-2ter")
    assert "EXTERNAL" in s.esmtp_features.get("auth", "").split(), s.esmtp_features
    assert not s.has_extn("xclient") and not s.has_extn("starttls") and not s.has_extn("chunking")
    code, _ = s.auth("EXTERNAL", lambda challenge=None: "alice@example.test")
    assert code == 235
    s.sendmail("alice@example.test", ["bob@example.test"],
               f"Subject: {subject}\r\nFrom: alice@example.test\r\n\r\nhello\r\n".encode())
    s.quit()
    assert postfix.wait_for_log(f"client=unknown[{CLIENT_SRC}], sasl_method=XCLIENT, "
                                "sasl_username=alice@example.test"), postfix.read_log()[-2000:]
    ev = proxy.wait_event(lambda e: e["listener"] == "smtp")
    assert ev["reason"] == "ok" and ev["auth"] == [{"mechanism": "EXTERNAL", "result": "ok",
                                                     "mailbox": "alice@example.test"}], ev
    deadline = time.monotonic() + 15
    message = b""
    while not message and time.monotonic() < deadline:
        m = _imap(ports.imap, pki, "fort")
        m.login("bob@example.test", "bobpw")
        m.select("INBOX")
        _, data = m.search(None, "SUBJECT", f'"{subject}"')
        if data[0]:
            _, fetched = m.fetch(data[0].split()[-1], "(RFC822)")
            first: Any = fetched[0]
            message = first[1]
        m.logout()
        if not message:
            time.sleep(0.3)
    assert message, postfix.read_log()[-2000:]
    # Postfix's own Received header: the real client address, and an authenticated (ESMTPA) submission
    assert f"(unknown [{CLIENT_SRC}])".encode() in message and b"with ESMTPA" in message, message


def test_smtp_client_xclient_xforward_refused(pki: TestPki, postfix: Postfix, start_proxy: StartProxy,
                                              login_files: dict[str, str]) -> None:
    smtp_backend = {"address": f"127.0.0.1:{postfix.smtp_port}", "identity": "xclient",
                    "login": {"mapping": login_files["mapping"]}}
    cfg, ports = _config(pki, smtp_backend=smtp_backend)
    proxy = start_proxy(cfg)
    assert ports.smtp is not None
    s = _smtp(ports.smtp, pki, "cps-2ter")
    code, text = s.docmd("XCLIENT", "ADDR=192.0.2.99 LOGIN=bob@example.test")
    assert code == 550 and b"XCLIENT" in text
    code, _ = s.docmd("XFORWARD", "ADDR=192.0.2.99")
    assert code == 550
    # the session is not poisoned: the card identity still works afterwards
    code, _ = s.auth("EXTERNAL", lambda challenge=None: "")
    assert code == 235
    s.quit()
    ev = proxy.wait_event(lambda e: e["listener"] == "smtp")
    assert ev["reason"] == "ok"
    refused = [e for e in proxy._snapshot_events() if e.get("event") == "client_identity_refused"]
    assert [e["command"] for e in refused] == ["XCLIENT", "XFORWARD"]
    assert "192.0.2.99" not in postfix.read_log()


@pytest.mark.parametrize("identity", ["xclient", "none"])
def test_smtp_smuggled_xclient_never_reaches_postfix(pki: TestPki, postfix: Postfix, start_proxy: StartProxy,
                                                     login_files: dict[str, str], identity: str) -> None:
    """What Postfix would parse as XCLIENT (tab, leading space, after a DATA end it accepts) is refused first."""
    smtp_backend: dict[str, Any] = {"address": f"127.0.0.1:{postfix.smtp_port}", "identity": identity}
    if identity == "xclient":
        smtp_backend["login"] = {"mapping": login_files["mapping"]}
    cfg, ports = _config(pki, smtp_backend=smtp_backend)
    proxy = start_proxy(cfg)
    assert ports.smtp is not None
    victim = f"victim-{identity}@example.test"
    s = _smtp(ports.smtp, pki, "cps-2ter")
    for line in (f"XCLIENT\tLOGIN={victim}", f" XCLIENT LOGIN={victim}", "XFORWARD\tADDR=192.0.2.98"):
        s.putcmd(line)
        code, _ = s.getreply()
        assert code in (500, 550), (line, code)
    assert s.mail("alice@example.test")[0] == 250 and s.rcpt("alice@example.test")[0] == 250
    assert s.docmd("DATA")[0] == 354
    # Postfix ends message data on ".\r\r\n": so does the proxy, and what follows is a command again
    s.send(f"Subject: smuggle\r\n\r\nbody\r\n.\r\r\nXCLIENT LOGIN={victim}\r\n".encode())
    queued = s.getreply()
    assert queued[0] == 250, (queued, postfix.read_log()[-1500:])
    assert s.getreply()[0] == 550
    s.quit()
    proxy.wait_event(lambda e: e["listener"] == "smtp")
    log = postfix.read_log()
    assert victim not in log and "192.0.2.98" not in log


def test_smtp_external_unmapped_card_refused(pki: TestPki, postfix: Postfix, start_proxy: StartProxy,
                                             login_files: dict[str, str]) -> None:
    smtp_backend = {"address": f"127.0.0.1:{postfix.smtp_port}", "identity": "xclient",
                    "login": {"mapping": login_files["mapping"]}}
    cfg, ports = _config(pki, smtp_backend=smtp_backend)
    proxy = start_proxy(cfg)
    assert ports.smtp is not None
    s = _smtp(ports.smtp, pki, "fort")   # IdNat_PS 810009876543: not in the mapping
    with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
        s.auth("EXTERNAL", lambda challenge=None: "")
    assert exc.value.smtp_code == 535 and b"5.7.8" in exc.value.smtp_error
    s.quit()
    ev = proxy.wait_event(lambda e: e["listener"] == "smtp")
    assert ev["auth"][0]["result"] == "not_mapped", ev


# ------------------------------------------------------------------------------------------ IMAP master login

def _master_listener(pki: TestPki, dovecot: Dovecot, login_files: dict[str, str]) -> tuple[dict[str, Any], DemoPorts]:
    return _config(pki, imap_backend={"address": f"127.0.0.1:{dovecot.imap_port}", "identity": "none",
                                      "login": dict(login_files)})


def test_imap_external_by_proxy_reaches_mapped_mailbox(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                                       login_files: dict[str, str]) -> None:
    cfg, ports = _master_listener(pki, dovecot, login_files)
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    assert "AUTH=EXTERNAL" in m.capabilities
    typ, _ = _external(m, "alice@example.test")
    assert typ == "OK"
    m.untagged_responses.clear()   # drop the CAPABILITY that came with the login answer
    assert "AUTH=EXTERNAL" not in m.capability()[1][-1].decode()   # advertised before login only
    typ, _ = m.select("INBOX")
    assert typ == "OK"
    m.logout()
    assert dovecot.wait_for_log("Login: user=<alice@example.test>, method=PLAIN, rip=127.0.0.1"), \
        dovecot.read_log()[-2000:]
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["auth"] == [{"mechanism": "EXTERNAL", "mailbox": "alice@example.test", "result": "ok"}], ev
    assert "masterpw" not in proxy.log_text()


def test_imap_external_sasl_ir_default_mailbox(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                               login_files: dict[str, str]) -> None:
    """``tag AUTHENTICATE EXTERNAL =`` (SASL-IR, no authorization identity): the card's default mailbox."""
    cfg, ports = _master_listener(pki, dovecot, login_files)
    start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    typ, data = m._simple_command("AUTHENTICATE", "EXTERNAL", "=")
    assert typ == "OK", data
    m.state = "AUTH"
    typ, _ = m.select("INBOX")
    assert typ == "OK"
    m.logout()


@pytest.mark.parametrize(("card", "authzid", "reason"), [
    ("cps-2ter", "bob@example.test", "authzid_not_allowed"),
    ("fort", "", "not_mapped"),
])
def test_imap_external_refused_never_reaches_dovecot(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                                     login_files: dict[str, str], card: str, authzid: str,
                                                     reason: str) -> None:
    cfg, ports = _master_listener(pki, dovecot, login_files)
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    before = len(dovecot.read_log())
    m = _imap(ports.imap, pki, card)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\]"):
        _external(m, authzid)
    m.logout()
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["auth"][0]["result"] == reason, ev
    deadline = time.monotonic() + 5
    while "(no auth attempts" not in dovecot.read_log()[before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    new = dovecot.read_log()[before:]
    # Dovecot saw a connection (made before the login) and says itself that nobody tried to log in
    assert "(no auth attempts" in new and "Login:" not in new and "auth failed" not in new, new
    assert "bob@example.test" not in new


def test_imap_plain_login_still_passes_through(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                               login_files: dict[str, str]) -> None:
    cfg, ports = _master_listener(pki, dovecot, login_files)
    start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    with pytest.raises(imaplib.IMAP4.error):
        m.login("alice@example.test", "wrong")
    typ, _ = m.login("alice@example.test", "alicepw")
    assert typ == "OK"
    m.logout()


def test_imap_master_password_from_env(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                       login_files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNIPROXY_TEST_MASTER_PW", dovecot.master_users["proxy-master"])
    files = {k: v for k, v in login_files.items() if k != "master_password_file"}
    files["master_password_env"] = "SNIPROXY_TEST_MASTER_PW"
    cfg, ports = _master_listener(pki, dovecot, files)
    start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    typ, _ = _external(m, "alice@example.test")
    assert typ == "OK"
    m.logout()


def test_external_login_keeps_b64_out_of_logs(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy,
                                               login_files: dict[str, str]) -> None:
    """The PLAIN response the proxy sends carries the master password: it must appear in no log line."""
    cfg, ports = _master_listener(pki, dovecot, login_files)
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    _external(m, "alice@example.test")
    m.logout()
    proxy.wait_event(lambda e: e["listener"] == "imap")
    plain = base64.b64encode(b"alice@example.test\0proxy-master\0masterpw").decode()
    assert "masterpw" not in proxy.log_text() and plain not in proxy.log_text()
    assert V2_SIGNATURE not in proxy.log_text().encode()


@pytest.mark.parametrize("send_cn", [False, True])
def test_master_login_over_proxy_v2_and_the_cn_conflict(pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy,
                                                        login_files: dict[str, str], send_cn: bool) -> None:
    """Proxy-side login through PROXY v2 on the CN-set-up Dovecot. Without the CN: the mapped mailbox, with the real
    client address. With the CN (what ``sniproxy check`` warns of): auth_ssl_username_from_cert replaces the master
    user's name by the CN, so Dovecot 2.3.19 looks the CN up as a master user and the login fails."""
    cfg, ports = _config(pki, imap_backend={"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}",
                                            "identity": "proxy-v2", "proxy_v2": {"send_cn": send_cn},
                                            "login": dict(login_files)})
    proxy = start_proxy(cfg)
    assert ports.imap is not None
    m = _imap(ports.imap, pki, "cps-2ter")
    if send_cn:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            _external(m, "alice@example.test")
        assert dovecot_cn.wait_for_log(f"passwd-file({CARD_CN},{CLIENT_SRC},master,"), dovecot_cn.read_log()[-2000:]
    else:
        typ, _ = _external(m, "alice@example.test")
        assert typ == "OK"
        assert dovecot_cn.wait_for_log(f"Login: user=<alice@example.test>, method=PLAIN, rip={CLIENT_SRC}"), \
            dovecot_cn.read_log()[-2000:]
    m.logout()
    ev = proxy.wait_event(lambda e: e["listener"] == "imap")
    assert ev["auth"][0]["result"] == ("backend_refused" if send_cn else "ok"), ev


def test_smtps_xclient_passes_the_backend_greeting(pki: TestPki, postfix: Postfix, start_proxy: StartProxy,
                                                   login_files: dict[str, str]) -> None:
    """Implicit TLS: the client gets Postfix's greeting that follows XCLIENT, then the same AUTH EXTERNAL."""
    cfg, ports = _config(pki, imaps_backend=None, smtp_backend=None)
    ports.smtps = free_ports(1)[0]
    cfg = config_dict(pki, ports)
    (ls,) = cfg["listeners"]
    ls["backend"] = {"address": f"127.0.0.1:{postfix.smtp_port}", "identity": "xclient",
                     "login": {"mapping": login_files["mapping"]}}
    proxy = start_proxy(cfg)
    s = smtplib.SMTP_SSL(timeout=10, source_address=(CLIENT_SRC, 0), context=client_context(pki, "cps-2ter"))
    s._host = SMTP_SANTE  # type: ignore[attr-defined]  # the SNI
    code, banner = s.connect("127.0.0.1", ports.smtps)
    assert code == 220 and b"mx.example.test" in banner
    s.ehlo("client.test")
    code, _ = s.auth("EXTERNAL", lambda challenge=None: "")
    assert code == 235
    s.quit()
    ev = proxy.wait_event(lambda e: e["listener"] == "smtps")
    assert ev["reason"] == "ok" and ev["auth"][0]["mailbox"] == "alice@example.test"
    assert postfix.wait_for_log(f"connect from unknown[{CLIENT_SRC}]") or f"[{CLIENT_SRC}]" in postfix.read_log()


def test_second_header_behind_a_trusted_balancer_refused(pki: TestPki, dovecot_cn: Dovecot,
                                                         start_proxy: StartProxy) -> None:
    """The balancer's header is believed; a header the client behind it sends as well is a spoof."""
    backend = {"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}", "identity": "proxy-v2"}
    cfg, ports = _config(pki, imaps_backend=backend, proxy_from=[f"{BALANCER_SRC}/32"])
    proxy = start_proxy(cfg)
    assert ports.imaps is not None
    with socket.create_connection(("127.0.0.1", ports.imaps), timeout=10, source_address=(BALANCER_SRC, 0)) as sock:
        sock.sendall(encode_v2(command="PROXY", src=("192.0.2.20", 1000), dst=("127.0.0.1", ports.imaps))
                     + _v1("10.66.66.66", 2000, ports.imaps))
        read_all(sock)
    ev = proxy.wait_event(lambda e: e["listener"] == "imaps")
    assert ev["reason"] == "untrusted_proxy_header" and ev["peer"] == "192.0.2.20:1000", ev


def test_local_header_keeps_the_balancer_address(pki: TestPki, dovecot_cn: Dovecot, start_proxy: StartProxy) -> None:
    """A v2 LOCAL header (a balancer's health check) carries no client: the real endpoints are used."""
    backend = {"address": f"127.0.0.1:{dovecot_cn.imap_haproxy_port}", "identity": "proxy-v2"}
    cfg, ports = _config(pki, imaps_backend=backend, proxy_from=[f"{BALANCER_SRC}/32"])
    proxy = start_proxy(cfg)
    assert ports.imaps is not None
    raw = socket.create_connection(("127.0.0.1", ports.imaps), timeout=10, source_address=(BALANCER_SRC, 0))
    raw.sendall(encode_v2(command="LOCAL", src=None, dst=None))
    with client_context(pki, "cps-2ter").wrap_socket(raw, server_hostname=IMAP_SANTE) as tls:
        assert tls.recv(4096).startswith(b"* OK")
        tls.sendall(b"a LOGOUT\r\n")
        read_all(tls)
    ev = proxy.wait_event(lambda e: e["listener"] == "imaps")
    assert ev["reason"] == "ok" and ev["peer"].startswith(BALANCER_SRC + ":") and "via" not in ev, ev
    assert dovecot_cn.wait_for_log(f"rip={BALANCER_SRC}")
