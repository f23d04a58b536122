"""sniproxy.proto.http_rewrite: identity stripping and adding, hop-by-hop, Host/SNI, card paths, faults."""

from __future__ import annotations

import base64
import dataclasses
import itertools
from urllib.parse import unquote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.card import parse_identity
from sniproxy.config.model import DEFAULT_CARD_HEADERS, Address, Backend, HeaderProfile, Listener, Protocol, Route
from sniproxy.demo.pki import TestPki, build
from sniproxy.proto.http_rewrite import (
    BadRequest,
    StripRules,
    TlsFacts,
    error_response,
    identity_headers,
    misdirected,
    needs_card,
    request_host,
    soap_version,
    strip_identity,
    without_hop_by_hop,
)
from sniproxy.routing import RouteTable

RULES = StripRules.build(DEFAULT_CARD_HEADERS.values(), ["X-Legacy-User", "X-Corp-*"])

IDENTITY_NAMES = [
    "X-SSL-Client-Verify", "X-SSL-Client-S-DN", "X-SSL-Client-I-DN", "X-SSL-Client-Serial", "X-SSL-Client-Cert",
    "X-SSL-Anything", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
    "Forwarded", "ssl_client_cert", "ssl_cipher", "ssl_session_id", "ssl_cipher_usekeysize", "SSL_CLIENT_S_DN",
    "X-Forwarded-Client-Cert", "Client-Cert", "Client-Cert-Chain", "X-Client-Cert", "X-Client-Cert-Chain",
    "X-MSS-IdNat-PS", "X-MSS-IdNat-Struct", "X-MSS-Profession", "X-MSS-Authority", "X-MSS-Card-Type",
    "X-Legacy-User", "X-Corp-Role", "X-Real-IP",
]


def spellings(name: str) -> list[bytes]:
    forms = {name, name.lower(), name.upper(), name.replace("-", "_"), name.replace("_", "-").lower(),
             name.replace("-", "_").upper(), "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))}
    return [f.encode() for f in sorted(forms)]


@pytest.mark.parametrize("name", IDENTITY_NAMES)
def test_every_spelling_and_copy_of_identity_headers_is_stripped(name: str) -> None:
    headers = [(b"host", b"h")] + [(s, b"spoof") for s in spellings(name) for _ in range(2)] + [(b"x-kept", b"1")]
    kept, removed = strip_identity(headers, RULES)
    assert kept == [(b"host", b"h"), (b"x-kept", b"1")]
    assert removed == 2 * len(spellings(name))


def test_ordinary_headers_kept() -> None:
    headers = [(n, b"v") for n in (b"content-type", b"soapaction", b"authorization", b"x-request-id", b"forwarded-ish")]
    kept, removed = strip_identity(headers, RULES)
    assert kept == headers and removed == 0


def test_hop_by_hop_removed_with_those_named_in_connection() -> None:
    headers = [(b"connection", b"close, X-Private , keep-alive"), (b"x-private", b"1"), (b"keep-alive", b"t=5"),
               (b"transfer-encoding", b"chunked"), (b"te", b"trailers"), (b"upgrade", b"h2c"),
               (b"proxy-connection", b"keep-alive"), (b"proxy-authorization", b"x"), (b"trailer", b"x"),
               (b"x-end", b"1")]
    assert without_hop_by_hop(headers) == [(b"x-end", b"1")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def _facts(pki: TestPki, card: str | None) -> TlsFacts:
    chain: tuple[bytes, ...] = ()
    ident = None
    if card is not None:
        certs = x509.load_pem_x509_certificates(pki.cards[card].chain.read_bytes())
        chain = tuple(c.public_bytes(Encoding.DER) for c in certs)
        # Values of its own where the test needs them (a fingerprint and an accented profession to see).
        ident = dataclasses.replace(parse_identity(certs[0], "igc-sante-fort-pp"), sha256="00ff",
                                    profession="Médecin")
    return TlsFacts(client_ip="2001:db8::1", client_port=4242, host="mss-msg.mssante.fr", tls_version="TLSv1.3",
                    cipher="TLS_AES_256_GCM_SHA384", cipher_bits=256, session_id="ab" * 32, chain_der=chain,
                    card=ident)


def test_identity_headers_per_profile(pki: TestPki) -> None:
    facts = _facts(pki, "fort")
    out = dict(identity_headers(list(HeaderProfile), facts, tuple(DEFAULT_CARD_HEADERS.items())))
    leaf = x509.load_der_x509_certificate(facts.chain_der[0])
    assert out[b"Forwarded"] == b'for="[2001:db8::1]:4242";proto=https;host=mss-msg.mssante.fr'
    assert out[b"X-Forwarded-For"] == b"2001:db8::1" and out[b"X-Forwarded-Proto"] == b"https"
    assert out[b"X-SSL-Client-Verify"] == b"SUCCESS"
    assert out[b"X-SSL-Client-Serial"] == format(leaf.serial_number, "X").encode()
    assert x509.load_pem_x509_certificate(unquote(out[b"X-SSL-Client-Cert"].decode()).encode()) == leaf
    assert b"CN=810009876543" in out[b"X-SSL-Client-S-DN"]
    assert out[b"X-SSL-Client-S-DN"].isascii()
    assert out[b"ssl_client_cert"].startswith(b"-----BEGIN CERTIFICATE----- ")
    assert out[b"ssl_cipher_usekeysize"] == b"256" and out[b"ssl_session_id"] == b"ab" * 32
    assert out[b"X-Forwarded-Client-Cert"].startswith(b"Hash=00ff;Cert=\"-----BEGIN%20CERTIFICATE")
    assert out[b"Client-Cert"] == b":" + base64.b64encode(facts.chain_der[0]) + b":"
    assert out[b"Client-Cert-Chain"] == b":" + base64.b64encode(facts.chain_der[1]) + b":"
    assert out[b"X-MSS-IdNat-PS"] == b"810009876543"
    assert out[b"X-MSS-Profession"] == b"M%C3%A9decin"    # header values stay ASCII
    # Every value the proxy writes is itself an identity header: a later hop strips it too.
    assert all(RULES.is_identity(n) for n in out)


def test_identity_headers_without_card(pki: TestPki) -> None:
    out = dict(identity_headers(list(HeaderProfile), _facts(pki, None), tuple(DEFAULT_CARD_HEADERS.items())))
    assert out[b"X-SSL-Client-Verify"] == b"NONE"
    assert not [n for n in out if n.lower().startswith((b"x-mss-", b"client-cert", b"x-forwarded-client"))]


def _routes() -> RouteTable:
    ls = Listener(name="h", binds=(Address("127.0.0.1", 1),), protocol=Protocol.HTTPS,
                  backend=Backend(Address("127.0.0.1", 2)),
                  routes=(Route("2bis", ("mss-msg.mssante.fr",)), Route("igcsante", ("mss-msg-igcsante.mssante.fr",
                                                                                     "*.sante.example"))),
                  default_flow="2bis")
    return RouteTable.from_listener(ls)


@pytest.mark.parametrize(("target", "host", "expected"), [
    (b"/", b"mss-msg.mssante.fr", "mss-msg.mssante.fr"),
    (b"/", b"MSS-MSG.mssante.fr.:443", "mss-msg.mssante.fr"),
    (b"/", b"[::1]:443", "::1"),
    (b"https://MSS-msg.mssante.fr:8443/x", b"mss-msg.mssante.fr", "mss-msg.mssante.fr"),
    (b"https://Other.example:8443/x", b"", "other.example"),
    (b"/", b"", None),
])
def test_request_host(target: bytes, host: bytes, expected: str | None) -> None:
    assert request_host(target, [(b"host", host)]) == expected


# Each is read differently by some backend than by a naive proxy: refused (400), never guessed at.
@pytest.mark.parametrize(("target", "host"), [
    (b"/", b"mss-msg.mssante.fr:443:1"),                       # nginx takes the first colon
    (b"/", b"mss-idp.mssante.fr, mss-msg.mssante.fr"),          # a list: X-Forwarded-Host split on commas
    (b"/", b"user@mss-msg.mssante.fr"),
    (b"http://10.0.0.1/", b"mss-msg.mssante.fr"),              # Django/Flask route on Host, the proxy on the target
    (b"https://mss-msg.mssante.fr#@x/", b"x"),                  # fragment and userinfo in the target
    (b"https://u@mss-msg.mssante.fr/", b"mss-msg.mssante.fr"),
])
def test_ambiguous_hosts_are_refused(target: bytes, host: bytes) -> None:
    with pytest.raises(BadRequest):
        request_host(target, [(b"host", host)])


@pytest.mark.parametrize("target", [b"/msg;/send", b"/msg;jsessionid=x/send", b"/otp/..;/msg/send", b"/%6dsg/send",
                                    b"//msg/send", b"/msg/://x", b"/MSG/send", b"/otp/%2e%2e/msg", b"/otp\\..\\msg",
                                    b"https://mss-msg.mssante.fr//msg"])
def test_card_paths_fail_closed_on_anything_a_backend_may_normalize(target: bytes) -> None:
    assert needs_card(target, ["/msg"])


def test_plain_open_paths_need_no_card() -> None:
    assert not needs_card(b"/otp/send?x=%2e%2e", ["/msg"])            # the query is not the path
    assert not needs_card(b"/messages", ["/msg"]) and not needs_card(b"/otp/msg", ["/msg"])


def test_connection_may_not_name_framing_fields() -> None:
    with pytest.raises(BadRequest):
        without_hop_by_hop([(b"content-length", b"5"), (b"connection", b"keep-alive, Content-Length")])
    kept = without_hop_by_hop([(b"content-length", b"5"), (b"connection", b"content-length")], strict=False)
    assert kept == [(b"content-length", b"5")]


@pytest.mark.parametrize("name", [b"WL-Proxy-Client-Cert", b"wl_proxy_ssl", b"$WSCC", b"$WSRA", b"X-ARR-ClientCert",
                                  b"X-Amzn-Mtls-Clientcert-Leaf"])
def test_app_server_certificate_headers_are_stripped(name: bytes) -> None:
    kept, removed = strip_identity([(name, b"spoofed"), (b"accept", b"*/*")], StripRules.build([], []))
    assert kept == [(b"accept", b"*/*")] and removed == 1


def test_misdirected_only_for_names_of_another_flow() -> None:
    routes = _routes()
    assert misdirected("mss-msg.mssante.fr", routes, "igcsante") == "2bis"
    assert misdirected("a.sante.example", routes, "2bis") == "igcsante"
    assert misdirected("mss-msg-igcsante.mssante.fr", routes, "igcsante") is None
    assert misdirected("127.0.0.1", routes, "igcsante") is None
    assert misdirected("unknown.example", routes, "igcsante") is None
    assert misdirected(None, routes, "igcsante") is None


@pytest.mark.parametrize(("target", "needed"), [
    (b"/cps", True), (b"/cps/x?y=1", True), (b"/cpsx", False), (b"/otp/login", False),
    (b"/otp/../cps/x", True), (b"/otp/%2e%2e/cps", True), (b"/otp/%2F..", True), (b"/otp\\..\\cps", True),
    (b"https://h/cps/x", True), (b"*", True),
])
def test_card_paths(target: bytes, needed: bool) -> None:
    assert needs_card(target, ["/cps/"]) is needed


def test_everything_needs_a_card_by_default() -> None:
    assert needs_card(b"/anything", ["/"])


@pytest.mark.parametrize(("headers", "version"), [
    ([(b"content-type", b"application/soap+xml; charset=utf-8; action=\"urn:x\"")], "1.2"),
    ([(b"content-type", b"text/xml; charset=utf-8"), (b"soapaction", b"\"urn:x\"")], "1.1"),
    ([(b"soapaction", b"")], "1.1"),
    ([(b"content-type", b"application/json")], None),
    ([], None),
])
def test_soap_version(headers: list[tuple[bytes, bytes]], version: str | None) -> None:
    assert soap_version(headers) == version


@pytest.mark.parametrize(("status", "soap"), list(itertools.product([400, 403, 421, 502, 504], ["1.1", "1.2", None])))
def test_error_bodies(status: int, soap: str | None) -> None:
    headers, body = error_response(status, "no <card> & more", soap)
    h = dict(headers)
    assert h[b"content-length"] == str(len(body)).encode() and h[b"connection"] == b"close"
    if soap == "1.2":
        assert h[b"content-type"].startswith(b"application/soap+xml")
        assert (b"env:Sender" if status < 500 else b"env:Receiver") in body
    elif soap == "1.1":
        assert h[b"content-type"].startswith(b"text/xml")
        assert (b"soap:Client" if status < 500 else b"soap:Server") in body
    else:
        assert h[b"content-type"].startswith(b"text/plain")
    if soap:
        assert b"no &lt;card&gt; &amp; more" in body
        import xml.dom.minidom
        xml.dom.minidom.parseString(body)
