"""HTTPS web-service flows end to end: real clients (curl, http.client, raw TLS sockets) through
``sniproxy run`` to a real HTTP/1.1 SOAP echo service on loopback (``tests.integration.httpbackend``).

The backend records every request head it receives, so "refused and never forwarded" is proven on
the backend's side, and the proxy's own ``connection`` event proves the reason.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.crls import write_crls
from sniproxy.demo.pki import TestPki
from tests.conftest import fail_or_skip, free_port
from tests.integration.clients import client_context, server_roots
from tests.integration.conftest import require_binary
from tests.integration.httppeers import HttpBackend
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration

MSG, MSG_SANTE = "mss-msg.mssante.fr", "mss-msg-igcsante.mssante.fr"
IDP, IDP_SANTE = "mss-idp.mssante.fr", "mss-idp-igcsante.mssante.fr"
NAMES = {MSG: "2bis", MSG_SANTE: "igcsante"}
ALL_PROFILES = ["forwarded", "nginx", "tomcat", "envoy", "rfc9440", "card"]
FORT_ID = "810009876543"


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpBackend]:
    try:
        b = HttpBackend(tmp_path_factory.mktemp("httpbackend") / "requests.jsonl")
    except RuntimeError as exc:
        fail_or_skip(f"HTTP backend did not start: {exc}")
    yield b
    b.stop()


def https_config(pki: TestPki, port: int, backend_port: int, *, http: dict[str, Any] | None = None,
                 client_auth: str = "required", names: dict[str, str] | None = None,
                 **kw: Any) -> dict[str, Any]:
    """A config with one ``https`` listener in front of ``backend_port`` (flows of conf/mssante-bi-flux)."""
    cfg = config_dict(pki, DemoPorts(), client_auth=client_auth, **kw)
    cfg["listeners"] = [{
        "name": "https", "bind": f"127.0.0.1:{port}", "protocol": "https",
        "backend": f"127.0.0.1:{backend_port}", "sni": dict(names or NAMES), "default_flow": "2bis",
        "http": {"headers": ALL_PROFILES, **(http or {})},
    }]
    return cfg


def start(cfg: dict[str, Any], tmp: Path) -> ProxyProcess:
    path = write_config(cfg, tmp / f"sniproxy-{uuid.uuid4().hex[:6]}.yaml")
    port = int(cfg["listeners"][0]["bind"].rpartition(":")[2])
    return ProxyProcess(path, wait_ports=[("127.0.0.1", port)])


@pytest.fixture(scope="module")
def proxy(pki: TestPki, backend: HttpBackend, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[ProxyProcess, int]]:
    port = free_port()
    p = start(https_config(pki, port, backend.port), tmp_path_factory.mktemp("proxy"))
    yield p, port
    p.stop()


def tls_socket(port: int, pki: TestPki, card: str | None = "fort", sni: str | None = MSG) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as http.client's own connect() does
    return client_context(pki, card).wrap_socket(raw, server_hostname=sni)


def read_all(sock: ssl.SSLSocket, limit: float = 10.0) -> bytes:
    """Everything until the proxy closes (bounded in time)."""
    sock.settimeout(limit)
    out = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    except (TimeoutError, ssl.SSLError, OSError):
        pass
    return out


def https_client(port: int, pki: TestPki, card: str | None = "fort", sni: str = MSG) -> http.client.HTTPSConnection:
    """``http.client`` connected to the proxy with SNI ``sni`` (the Host header is ``sni`` too)."""
    conn = http.client.HTTPSConnection(sni, port, timeout=30)
    conn.sock = tls_socket(port, pki, card, sni)
    return conn


def curl(pki: TestPki, url: str, *, card: str | None = "fort", resolve: str | None = None,
         args: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    require_binary("curl")
    cmd = ["curl", "-sS", "--max-time", str(int(timeout)), "--cacert", str(server_roots(pki))]
    if card is not None:
        kp = pki.cards[card]
        cmd += ["--cert", str(kp.chain), "--key", str(kp.key)]
    if resolve:
        cmd += ["--resolve", resolve]
    cmd += [*(args or []), url]
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10)


def header_values(report: dict[str, Any], name: str) -> list[str]:
    return [v for n, v in report["headers"] if n.lower() == name.lower()]


# ---------------------------------------------------------------------------- identity headers
SPOOFS = [
    ("X-SSL-Client-Verify", "SUCCESS-SPOOF"), ("x-ssl-client-s-dn", "CN=EVIL"), ("X-SSL-CLIENT-CERT", "evil"),
    ("X-Forwarded-For", "6.6.6.6"), ("x-forwarded-for", "6.6.6.7"), ("X-Forwarded-Proto", "http-spoof"),
    ("X-Forwarded-Host", "evil"), ("Forwarded", "for=6.6.6.6"), ("FORWARDED", "for=6.6.6.8"),
    ("ssl_client_cert", "evil"), ("SSL_CLIENT_CERT", "evil2"), ("ssl-client-cert", "evil3"),
    ("ssl_cipher", "NULL-SPOOF"),
    ("ssl_session_id", "5p00f5e55"), ("ssl_cipher_usekeysize", "99999"),
    ("X-Forwarded-Client-Cert", "Hash=evil"), ("x-forwarded-client-cert", "Hash=evil2"),
    ("Client-Cert", ":ZXZpbA==:"), ("client-cert-chain", ":ZXZpbA==:"), ("X-Client-Cert", "evil"),
    ("X-MSS-IdNat-PS", "899999999999"), ("x-mss-idnat-ps", "899999999998"), ("X_MSS_IDNAT_PS", "899999999997"),
    ("X-MSS-Authority", "igc-cps-2ter-spoof"),
]


def test_identity_headers_carry_the_card_and_never_a_client_copy(proxy: tuple[ProxyProcess, int], pki: TestPki,
                                                                 backend: HttpBackend) -> None:
    p, port = proxy
    conn = https_client(port, pki, "fort")
    conn.putrequest("POST", "/ws/identity")
    for name, value in SPOOFS:
        conn.putheader(name, value)
    body = b"<soap/>"
    conn.putheader("Content-Type", "text/xml")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data
    report = json.loads(data)
    conn.close()
    card = x509.load_pem_x509_certificate(pki.cards["fort"].cert.read_bytes())
    der = card.public_bytes(Encoding.DER)
    for name, value in SPOOFS:
        assert value not in header_values(report, name), (name, report["headers"])
    assert not [h for h in report["headers"] if any(v in h[1] for _, v in SPOOFS if len(v) >= 4)], report["headers"]
    assert header_values(report, "X-MSS-IdNat-PS") == [FORT_ID]
    assert header_values(report, "X-MSS-Authority") == ["igc-sante-fort-pp"]
    assert header_values(report, "X-SSL-Client-Verify") == ["SUCCESS"]
    assert header_values(report, "X-SSL-Client-Serial") == [format(card.serial_number, "X")]
    assert "CN=" + FORT_ID in header_values(report, "X-SSL-Client-S-DN")[0]
    pem = unquote(header_values(report, "X-SSL-Client-Cert")[0])
    assert x509.load_pem_x509_certificate(pem.encode()) == card
    assert header_values(report, "Client-Cert") == [f":{base64.b64encode(der).decode()}:"]
    assert len(header_values(report, "Client-Cert-Chain")) == 1
    tomcat = header_values(report, "ssl_client_cert")[0]
    assert tomcat.startswith("-----BEGIN CERTIFICATE----- ") and "\n" not in tomcat
    assert header_values(report, "ssl_cipher")[0].startswith(("ECDHE", "TLS_"))
    xfcc = header_values(report, "X-Forwarded-Client-Cert")[0]
    assert xfcc.startswith(f"Hash={hashlib.sha256(der).hexdigest()};Cert=")
    assert header_values(report, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(report, "X-Forwarded-Proto") == ["https"]
    assert header_values(report, "Forwarded")[0].startswith('for="127.0.0.1:')
    # Only the proxy's own copy of each identity header, exactly once.
    names = [n.lower() for n, _ in report["headers"]]
    for name in ("x-ssl-client-verify", "x-forwarded-for", "forwarded", "ssl_client_cert", "client-cert",
                 "x-mss-idnat-ps", "x-forwarded-client-cert"):
        assert names.count(name) == 1, (name, names)
    assert not any(n in names for n in ("ssl-client-cert", "x_mss_idnat_ps", "x-client-cert"))
    ev = p.wait_event(lambda e: e.get("stripped_headers"))
    assert ev["stripped_headers"] == len(SPOOFS) and ev["identity"]["idnat_ps"] == FORT_ID


@pytest.mark.parametrize(("resolve", "url_host", "flow"), [
    (True, MSG, "2bis"), (True, MSG_SANTE, "igcsante"), (False, "127.0.0.1", "2bis")])
def test_curl_with_and_without_sni(proxy: tuple[ProxyProcess, int], pki: TestPki, resolve: bool,
                                   url_host: str, flow: str) -> None:
    p, port = proxy
    p.clear()
    r = curl(pki, f"https://{url_host}:{port}/ws/curl?flow={flow}",
             resolve=f"{url_host}:{port}:127.0.0.1" if resolve else None,
             args=["-H", "X-SSL-Client-Verify: SUCCESS", "-H", "X-MSS-IdNat-PS: 899999999999",
                   "-H", "Content-Type: application/soap+xml", "--data-binary", "<env/>"])
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert header_values(report, "X-MSS-IdNat-PS") == [FORT_ID]
    assert header_values(report, "X-Forwarded-Host") == [f"{url_host}:{port}"]
    ev = p.wait_event(lambda e: e["listener"] == "https")
    assert ev["flow"] == flow and ev["reason"] == "ok" and ev["sni"] == (url_host if resolve else None)


# ---------------------------------------------------------------------------- strict framing
SMUGGLING = {
    "cl_and_te": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_gzip_chunked": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                       b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_identity": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                   b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc",
    "te_twice": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_xchunked": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                   b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length: 3\r\n"
                    b"Content-Length: 5\r\n\r\nabcde",
    "cl_list": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length: 3, 5\r\n\r\nabcde",
    "bare_lf": b"POST /smuggle/{m} HTTP/1.1\nHost: " + MSG.encode() + b"\nContent-Length: 3\n\nabc",
    "bare_lf_one_line": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\nContent-Length: 3\r\n\r\nabc",
    "obs_fold": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nX-A: a\r\n b\r\n"
                b"Content-Length: 3\r\n\r\nabc",
    "obs_fold_te": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nTransfer-Encoding:\r\n chunked\r\n"
                   b"\r\n0\r\n\r\n",
    "nul_in_value": b"GET /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nX-A: a\x00b\r\n\r\n",
    "ctl_in_value": b"GET /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nX-A: a\x01b\r\n\r\n",
    "space_before_colon": b"GET /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Length : 0\r\n\r\n",
    "two_hosts": b"GET /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nHost: evil\r\n\r\n",
    "bad_chunk_size": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk_bare_lf": b"POST /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "oversize_request_line": b"GET /smuggle/{m}?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n\r\n",
    "oversize_headers": b"GET /smuggle/{m} HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n"
                        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(40)) + b"\r\n",
    "http_09": b"GET /smuggle/{m}\r\n\r\n",
    "no_host": b"GET /smuggle/{m} HTTP/1.1\r\nX-A: b\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_refused_with_400_and_never_forwarded(proxy: tuple[ProxyProcess, int], pki: TestPki,
                                                         backend: HttpBackend, case: str) -> None:
    p, port = proxy
    marker = uuid.uuid4().hex[:12]
    raw = SMUGGLING[case].replace(b"{m}", marker.encode())
    # A valid request pipelined behind the bad one must not reach the backend either.
    follow = b"GET /smuggle/" + marker.encode() + b"-after HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\n\r\n"
    with tls_socket(port, pki) as s:
        s.sendall(raw + follow)
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 400 "), (case, answer[:200])
    assert answer.count(b"HTTP/1.1") == 1
    time.sleep(0.2)
    assert not [path for path in backend.paths() if marker in path], case
    ev = p.wait_event(lambda e: e.get("reason") == "bad_request" and e.get("requests", 0) <= 1
                      and e.get("statuses") == {"400": 1} and e["duration_ms"] >= 0)
    assert ev["outcome"] == "refused"


def test_soap_fault_bodies_for_400(proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    _, port = proxy
    for ctype, ns in ((b"text/xml", b"http://schemas.xmlsoap.org/soap/envelope/"),
                      (b"application/soap+xml", b"http://www.w3.org/2003/05/soap-envelope")):
        with tls_socket(port, pki) as s:
            s.sendall(b"POST /ws HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Type: " + ctype +
                      b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            answer = read_all(s)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert ns in answer and b"Fault" in answer, answer


def test_pipelined_requests_answered_in_order(proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    _, port = proxy
    reqs = b"".join(b"GET /pipe/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, MSG.encode()) for i in range(5))
    reqs += (b"POST /pipe/5 HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\n" % MSG.encode())
    reqs += b"GET /pipe/6 HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % MSG.encode()
    with tls_socket(port, pki) as s:
        s.sendall(reqs)
        answer = read_all(s)
    assert answer.count(b"HTTP/1.1 200 ") == 7
    positions = [answer.index(b'"path": "/pipe/%d"' % i) for i in range(7)]
    assert positions == sorted(positions)
    assert b'"body_length": 3' in answer


def test_expect_100_continue(proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    _, port = proxy
    with tls_socket(port, pki) as s:
        s.sendall(b"POST /ws/expect HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
                  b"Connection: close\r\n\r\n" % MSG.encode())
        s.settimeout(10)
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 100 "), first
        s.sendall(b"hello")
        answer = first + read_all(s)
    assert b"HTTP/1.1 200 " in answer and b'"body_length": 5' in answer


def test_hop_by_hop_headers_removed(proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    _, port = proxy
    with tls_socket(port, pki) as s:
        s.sendall(b"GET /ws/hop HTTP/1.1\r\nHost: %s\r\nConnection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n"
                  b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n"
                  b"Proxy-Authorization: Basic eDp5\r\nX-Kept: yes\r\n\r\n" % MSG.encode())
        answer = read_all(s)
    report = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    names = {n.lower() for n, _ in report["headers"]}
    assert "x-kept" in names
    for gone in ("x-secret-hop", "keep-alive", "proxy-connection", "te", "upgrade", "proxy-authorization"):
        assert gone not in names, gone


# ---------------------------------------------------------------------------- flows and errors
def test_host_of_another_flow_gets_421(proxy: tuple[ProxyProcess, int], pki: TestPki, backend: HttpBackend) -> None:
    p, port = proxy
    marker = uuid.uuid4().hex[:10]
    # SNI chose igcsante; the Host names the 2bis host.
    with tls_socket(port, pki, sni=MSG_SANTE) as s:
        s.sendall(b"POST /ws/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/soap+xml\r\nContent-Length: 0\r\n\r\n"
                  % (marker.encode(), MSG.encode()))
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 421 Misdirected Request"), answer[:100]
    assert b"http://www.w3.org/2003/05/soap-envelope" in answer and b"env:Sender" in answer
    assert not [x for x in backend.paths() if marker in x]
    ev = p.wait_event(lambda e: e["reason"] == "misdirected_request")
    assert ev["flow"] == "igcsante" and ev["statuses"] == {"421": 1}
    # Same flow by another name, or no name the listener routes: served.
    r = curl(pki, f"https://{MSG_SANTE}:{port}/ws/same", resolve=f"{MSG_SANTE}:{port}:127.0.0.1",
             args=["-H", f"Host: {MSG_SANTE.upper()}."])
    assert r.returncode == 0 and b'"path": "/ws/same"' in r.stdout, r.stderr
    # curl without --resolve sends no SNI (IP literal): flow 2bis; a Host of the igcsante flow is misdirected.
    r = curl(pki, f"https://127.0.0.1:{port}/ws/x", args=["-H", f"Host: {MSG_SANTE}", "-o", "/dev/null",
                                                           "-w", "%{http_code}"])
    assert r.stdout == b"421"


@pytest.fixture(scope="module")
def optional_proxy(pki: TestPki, backend: HttpBackend, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[ProxyProcess, int]]:
    port = free_port()
    cfg = https_config(pki, port, backend.port, client_auth="optional", names={IDP: "2bis", IDP_SANTE: "igcsante"},
                       http={"card_required_paths": ["/cps"], "response_timeout": 1})
    p = start(cfg, tmp_path_factory.mktemp("proxy-opt"))
    yield p, port
    p.stop()


def test_optional_client_auth_card_paths(optional_proxy: tuple[ProxyProcess, int], pki: TestPki,
                                         backend: HttpBackend) -> None:
    p, port = optional_proxy
    url = f"https://{IDP}:{port}"
    resolve = f"{IDP}:{port}:127.0.0.1"
    # OTP users without a card reach the OTP service, with no card identity and Verify NONE.
    r = curl(pki, url + "/otp/login", card=None, resolve=resolve, args=["-H", "X-MSS-IdNat-PS: 899999999999"])
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert header_values(report, "X-SSL-Client-Verify") == ["NONE"]
    assert header_values(report, "X-MSS-IdNat-PS") == []
    # The card service needs a card: 403 with a SOAP 1.1 fault, never forwarded.
    marker = uuid.uuid4().hex[:10]
    r = curl(pki, url + f"/cps/{marker}", card=None, resolve=resolve,
             args=["-H", "SOAPAction: urn:auth", "-H", "Content-Type: text/xml", "--data-binary", "<e/>",
                   "-w", "\n%{http_code}"])
    assert r.stdout.endswith(b"\n403") and b"<faultcode>soap:Client</faultcode>" in r.stdout, r.stdout
    assert not [x for x in backend.paths() if marker in x]
    assert p.wait_event(lambda e: e["reason"] == "card_required")["statuses"] == {"403": 1}
    # Dot segments cannot walk from a public path into a card path.
    r = curl(pki, url + "/otp/%2e%2e/cps/x", card=None, resolve=resolve, args=["-o", "/dev/null", "-w", "%{http_code}"])
    assert r.stdout == b"403"
    # With a card, the card path is served.
    r = curl(pki, url + "/cps/ok", resolve=resolve)
    assert header_values(json.loads(r.stdout), "X-MSS-IdNat-PS") == [FORT_ID]


def test_backend_timeout_gets_504_with_soap_fault(optional_proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    p, port = optional_proxy
    r = curl(pki, f"https://{IDP}:{port}/slow?delay=3", resolve=f"{IDP}:{port}:127.0.0.1",
             args=["-H", "Content-Type: application/soap+xml", "-w", "\n%{http_code}"])
    assert r.stdout.endswith(b"\n504") and b"env:Receiver" in r.stdout, r.stdout
    assert p.wait_event(lambda e: e["reason"] == "backend_timeout")["statuses"] == {"504": 1}


def test_backend_down_gets_502(pki: TestPki, tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    p = start(https_config(pki, port, dead), tmp_path)
    try:
        r = curl(pki, f"https://{MSG}:{port}/ws", resolve=f"{MSG}:{port}:127.0.0.1",
                 args=["-H", "SOAPAction: x", "-w", "\n%{http_code}"])
        assert r.stdout.endswith(b"\n502") and b"soap:Server" in r.stdout, r.stdout
        assert p.wait_event(lambda e: e["reason"] == "backend_unavailable")["statuses"] == {"502": 1}
    finally:
        p.stop()


# ---------------------------------------------------------------------------- volume
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class _RssWatch:
    """Peak RSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.start = _rss_kib(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak - self.start


FIFTY_MB = 50 * 1024 * 1024


def test_50mb_upload_and_download_stream_with_bounded_memory(proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    p, port = proxy
    from tests.integration.httpbackend import PATTERN

    watch = _RssWatch(p.proc.pid)
    # Upload, chunked (http.client sends an iterable body chunked), hashed by the backend.
    conn = https_client(port, pki)

    def body() -> Iterator[bytes]:
        for _ in range(FIFTY_MB // len(PATTERN)):
            yield PATTERN

    conn.request("POST", "/ws/upload", body=body(), headers={"Content-Type": "application/octet-stream"},
                 encode_chunked=True)
    resp = conn.getresponse()
    report = json.loads(resp.read())
    assert report["body_length"] == FIFTY_MB
    assert report["body_sha256"] == hashlib.sha256(PATTERN * (FIFTY_MB // len(PATTERN))).hexdigest()
    # Download on the same connection, chunked by the backend, read in pieces.
    conn.request("GET", f"/download?size={FIFTY_MB}")
    resp = conn.getresponse()
    got, h = 0, hashlib.sha256()
    while piece := resp.read(1 << 20):
        got += len(piece)
        h.update(piece)
    conn.close()
    growth = watch.stop()
    assert got == FIFTY_MB and h.hexdigest() == report["body_sha256"]
    print(f"proxy RSS: start {watch.start} KiB, peak growth {growth} KiB over 50 MB up + 50 MB down")
    assert growth < 100 * 1024, growth


def test_1000_keepalive_requests_on_one_connection(proxy: tuple[ProxyProcess, int], pki: TestPki) -> None:
    p, port = proxy
    conn = https_client(port, pki)
    for i in range(1000):
        conn.request("POST", f"/ws/ka/{i}", body=b"<x/>", headers={"Content-Type": "text/xml"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["path"] == f"/ws/ka/{i}"
    conn.close()
    ev = p.wait_event(lambda e: e.get("requests") == 1000)
    assert ev["reason"] == "ok" and ev["statuses"] == {"200": 1000}
    # The backend connection went back to the pool after each exchange and was reused: at most one opened.
    assert ev.get("backend_connections", 0) <= 1, ev


# ---------------------------------------------------------------------------- revocation
def test_revoked_card_refused_on_https_as_on_imaps(pki: TestPki, backend: HttpBackend, tmp_path: Path) -> None:
    crls = write_crls(pki, tmp_path / "crl", ["igc-sante-fort-pp"], revoked_cards=("revoked",))
    port, imaps = free_port(), free_port()
    cfg = https_config(pki, port, backend.port, crls=crls, state_dir=tmp_path / "state")
    cfg["listeners"].append({"name": "imaps", "bind": f"127.0.0.1:{imaps}", "protocol": "imaps",
                             "backend": "127.0.0.1:9", "sni": {"frontimap.mssante.fr": "2bis"},
                             "default_flow": "2bis"})
    p = start(cfg, tmp_path)
    try:
        r = curl(pki, f"https://{MSG}:{port}/ws/revoked", card="revoked", resolve=f"{MSG}:{port}:127.0.0.1")
        assert r.returncode != 0
        https_ev = p.wait_event(lambda e: e["listener"] == "https")
        try:
            with tls_socket(imaps, pki, card="revoked", sni="frontimap.mssante.fr") as s:
                s.recv(10)
        except (ssl.SSLError, OSError):
            pass
        imap_ev = p.wait_event(lambda e: e["listener"] == "imaps")
        for ev in (https_ev, imap_ev):
            assert ev["reason"] == "revoked" and ev["phase"] == "handshake", ev
            assert ev["revocation"]["reason"] == "keyCompromise"
        assert "/ws/revoked" not in backend.paths()
        # A good card of the same authority is served.
        r = curl(pki, f"https://{MSG}:{port}/ws/good", card="fort-liberal", resolve=f"{MSG}:{port}:127.0.0.1")
        assert r.returncode == 0 and b"/ws/good" in r.stdout, r.stderr
    finally:
        p.stop()


# ---------------------------------------------------------------------------- mode tcp
class _RawBackend:
    """A one-shot TCP server: reads a PROXY v2 header (if asked) and one HTTP request, answers 200."""

    def __init__(self, proxy_v2: bool,
                 response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok") -> None:
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.proxy_v2 = proxy_v2
        self.response = response
        self.header: Any = None
        self.request = b""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from sniproxy.proto.proxy_protocol import ProxyHeaderParser

        self.sock.settimeout(15)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            if self.proxy_v2:
                parser = ProxyHeaderParser()
                while self.header is None:
                    self.header = parser.feed(conn.recv(4096))
                data = self.header.rest
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            self.request = data
            conn.sendall(self.response)

    def join(self) -> None:
        self._thread.join(timeout=15)
        self.sock.close()


@pytest.mark.parametrize("proxy_v2", [False, True])
def test_mode_tcp_relays_bytes_with_optional_proxy_v2(pki: TestPki, tmp_path: Path, proxy_v2: bool) -> None:
    from sniproxy.proto.proxy_protocol import parse_ssl_tlv
    from sniproxy.proto.proxy_wire import PP2_TYPE_AUTHORITY, PP2_TYPE_SSL

    raw = _RawBackend(proxy_v2)
    port = free_port()
    cfg = https_config(pki, port, raw.port, http={"mode": "tcp"})
    del cfg["listeners"][0]["http"]["headers"]
    if proxy_v2:
        cfg["listeners"][0]["backend"] = {"address": f"127.0.0.1:{raw.port}", "identity": "proxy-v2"}
    p = start(cfg, tmp_path)
    try:
        r = curl(pki, f"https://{MSG_SANTE}:{port}/raw", resolve=f"{MSG_SANTE}:{port}:127.0.0.1",
                 args=["-H", "X-SSL-Client-Verify: SUCCESS-SPOOF"])
        raw.join()
        assert r.returncode == 0 and r.stdout == b"ok", r.stderr
        # Bytes are not rewritten in mode tcp: the backend must not trust headers (docs/https.md).
        assert b"GET /raw HTTP/1.1" in raw.request and b"SUCCESS-SPOOF" in raw.request
        if proxy_v2:
            ssl_info = parse_ssl_tlv(raw.header.tlv(PP2_TYPE_SSL))
            assert ssl_info["cn"] == FORT_ID and ssl_info["verify"] == 0
            assert raw.header.tlv(PP2_TYPE_AUTHORITY) == MSG_SANTE.encode()
        ev = p.wait_event(lambda e: e["listener"] == "https")
        assert ev["flow"] == "igcsante" and ev["reason"] == "ok" and "mode" not in ev
    finally:
        p.stop()


@pytest.mark.parametrize(("response", "status", "body", "reason"), [
    # HTTP/1.0 framing by the connection's end, a hop-by-hop field named in Connection: relayed as chunked.
    (b"HTTP/1.0 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Kept: 1\r\n\r\nuntil-close",
     200, b"until-close", "ok"),
    # The backend closes before a complete head: 502, reason backend_protocol.
    (b"HTTP/1.1 200 OK\r\nContent-Le", 502, None, "backend_protocol"),
    (b"garbage\r\n\r\n", 502, None, "backend_protocol"),
])
def test_backend_responses_reframed_or_refused(pki: TestPki, tmp_path: Path, response: bytes, status: int,
                                               body: bytes | None, reason: str) -> None:
    raw = _RawBackend(False, response)
    port = free_port()
    p = start(https_config(pki, port, raw.port), tmp_path)
    try:
        conn = https_client(port, pki)
        conn.request("GET", "/raw", headers={"SOAPAction": "x"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        raw.join()
        assert resp.status == status, data
        if body is not None:
            assert data == body and resp.getheader("X-Kept") == "1"
            assert resp.getheader("X-Secret") is None and resp.getheader("Keep-Alive") is None
        else:
            assert b"soap:Server" in data
        assert p.wait_event(lambda e: e["listener"] == "https")["reason"] == reason
    finally:
        p.stop()


def test_keepalive_connections_do_not_count_as_handshakes(pki: TestPki, backend: HttpBackend, tmp_path: Path) -> None:
    """limits.max_pending_per_ip counts connections still in their handshake, not ones serving requests."""
    port = free_port()
    cfg = https_config(pki, port, backend.port)
    cfg["limits"] = {"max_pending_per_ip": 2}
    p = start(cfg, tmp_path)
    conns = []
    try:
        for _ in range(5):                       # more keep-alive connections than the handshake limit
            c = https_client(port, pki)
            c.request("GET", "/ping")
            r = c.getresponse()
            r.read()
            assert r.status == 200
            conns.append(c)
    finally:
        for c in conns:
            c.close()
        p.stop()
    assert not [e for e in p.connection_events() if e["reason"] == "too_many_from_ip"]


def test_a_backend_body_on_head_never_becomes_the_next_response(pki: TestPki, tmp_path: Path) -> None:
    """Bytes a backend sends after a response (here a body on HEAD that looks like a response) are never
    read as the answer to the next request: the connection is not pooled."""
    import threading

    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(15)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            buf = b""
            while not stop.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                if head.startswith(b"HEAD "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(evil) + evil)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nGOOD")

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    port = free_port()
    p = start(https_config(pki, port, srv.getsockname()[1]), tmp_path)
    try:
        conn = https_client(port, pki)
        conn.request("HEAD", "/doc")
        head = conn.getresponse()
        head.read()
        assert head.status == 200
        for _ in range(2):
            conn.request("GET", "/doc")
            resp = conn.getresponse()
            assert resp.read() == b"GOOD"
        conn.close()
    finally:
        stop.set()
        srv.close()
        p.stop()
