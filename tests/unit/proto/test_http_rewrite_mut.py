"""sniproxy.proto.http_rewrite: the cases scripts/mutation.py found untested (issue 11), values in, values out."""

from __future__ import annotations

import pytest

from sniproxy.card import UnreadableCard
from sniproxy.proto.http_rewrite import (
    CARD,
    ENVOY,
    FORWARDED,
    HOP_BY_HOP,
    NGINX,
    RFC9440,
    TOMCAT,
    BadRequest,
    StripRules,
    TlsFacts,
    error_response,
    host_of,
    identity_headers,
    needs_card,
    reason_phrase,
    request_host,
    strip_identity,
    without_hop_by_hop,
)

BARE = StripRules.build([], [])


@pytest.mark.parametrize("name", ["Forwarded", "X-Forwarded-Client-Cert", "Client-Cert", "Client-Cert-Chain",
                                  "X-Real-IP", "X-Client-Verify", "X-Client-DN", "X-ARR-ClientCert"])
def test_every_built_in_exact_name_is_stripped(name: str) -> None:
    # Without any configured name: the built-in list alone removes each of them.
    kept, removed = strip_identity([(name.encode(), b"spoof"), (b"accept", b"*/*")], BARE)
    assert (kept, removed) == ([(b"accept", b"*/*")], 1)


@pytest.mark.parametrize("name", ["X-Forwarded-Anything", "X-SSL-Anything", "X-Client-Cert-Anything",
                                  "SSL-Anything", "X-MSS-Anything", "WL-Proxy-Anything", "$WSAnything",
                                  "X-Amzn-Mtls-Anything"])
def test_every_built_in_prefix_is_stripped(name: str) -> None:
    kept, removed = strip_identity([(name.encode(), b"spoof"), (b"accept", b"*/*")], BARE)
    assert (kept, removed) == ([(b"accept", b"*/*")], 1)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_every_hop_by_hop_name_is_removed_alone(name: bytes) -> None:
    assert without_hop_by_hop([(name.title(), b"x"), (b"accept", b"*/*")]) == [(b"accept", b"*/*")]


@pytest.mark.parametrize(("status", "reason"), [(400, b"Bad Request"), (403, b"Forbidden"),
                                                (421, b"Misdirected Request"), (502, b"Bad Gateway"),
                                                (504, b"Gateway Timeout"), (500, b"Error")])
def test_reason_phrases(status: int, reason: bytes) -> None:
    assert reason_phrase(status) == reason
    headers, body = error_response(status, "why", None)
    assert body == b"%d %s: why\n" % (status, reason)
    assert headers == [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body)),
                       (b"connection", b"close")]


def test_soap_12_fault_exactly() -> None:
    headers, body = error_response(502, "a <b>", "1.2")
    assert headers[0] == (b"content-type", b"application/soap+xml; charset=utf-8")
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>'
        b'<env:Code><env:Value>env:Receiver</env:Value></env:Code>'
        b'<env:Reason><env:Text xml:lang="en">a &lt;b&gt;</env:Text></env:Reason>'
        b'</env:Fault></env:Body></env:Envelope>\n')
    assert b"<env:Value>env:Sender</env:Value>" in error_response(499, "x", "1.2")[1]
    assert b"<env:Value>env:Receiver</env:Value>" in error_response(500, "x", "1.2")[1]


def test_soap_11_fault_exactly() -> None:
    headers, body = error_response(502, "a <b>", "1.1")
    assert headers[0] == (b"content-type", b"text/xml; charset=utf-8")
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
        b'<faultcode>soap:Server</faultcode><faultstring>a &lt;b&gt;</faultstring>'
        b'</soap:Fault></soap:Body></soap:Envelope>\n')
    assert b"<faultcode>soap:Client</faultcode>" in error_response(499, "x", "1.1")[1]
    assert b"<faultcode>soap:Server</faultcode>" in error_response(500, "x", "1.1")[1]


def test_connection_naming_framing_message() -> None:
    with pytest.raises(BadRequest, match=r"^Connection names a framing or routing field$"):
        without_hop_by_hop([(b"connection", b"host")])


def _plain(**kw: object) -> TlsFacts:
    base: dict[str, object] = {"client_ip": "192.0.2.1", "client_port": 1, "host": None, "tls_version": "TLSv1.3",
                               "cipher": "C", "cipher_bits": None, "session_id": "", "chain_der": (), "card": None}
    base.update(kw)
    return TlsFacts(**base)  # type: ignore[arg-type]


def test_forwarded_ipv4_without_host() -> None:
    assert identity_headers([FORWARDED], _plain(), []) == [
        (b"Forwarded", b'for="192.0.2.1:1";proto=https'), (b"X-Forwarded-For", b"192.0.2.1"),
        (b"X-Forwarded-Proto", b"https")]


def test_forwarded_host_quoted_when_not_a_token() -> None:
    out = dict(identity_headers([FORWARDED], _plain(host='a "b"\\'), []))
    assert out[b"Forwarded"] == b'for="192.0.2.1:1";proto=https;host="a \\"b\\"\\\\"'
    assert out[b"X-Forwarded-Host"] == b'a "b"\\'


def test_tomcat_without_card_session_or_bits() -> None:
    assert identity_headers([TOMCAT], _plain(), []) == [(b"ssl_cipher", b"C")]
    assert identity_headers([TOMCAT], _plain(session_id="ab", cipher_bits=0), []) == [
        (b"ssl_cipher", b"C"), (b"ssl_session_id", b"ab"), (b"ssl_cipher_usekeysize", b"0")]


def test_card_profiles_need_a_chain() -> None:
    assert identity_headers([ENVOY, RFC9440, CARD], _plain(), [("rpps", "X-MSS-IdNat-PS")]) == []
    assert identity_headers([NGINX], _plain(), []) == [(b"X-SSL-Client-Verify", b"NONE")]


def test_rfc9440_single_certificate_has_no_chain_field() -> None:
    assert identity_headers([RFC9440], _plain(chain_der=(b"x",)), []) == [(b"Client-Cert", b":eA==:")]
    assert identity_headers([RFC9440], _plain(chain_der=(b"x", b"y", b"z")), []) == [
        (b"Client-Cert", b":eA==:"), (b"Client-Cert-Chain", b":eQ==:, :eg==:")]


def test_unreadable_card_fails_dn_profiles() -> None:
    with pytest.raises(ValueError, match=r"^card identity unreadable \(none\)$"):
        identity_headers([NGINX], _plain(chain_der=(b"x",)), [])
    with pytest.raises(ValueError, match=r"^card identity unreadable \(bad der\)$"):
        identity_headers([ENVOY], _plain(chain_der=(b"x",), card=UnreadableCard("bad der")), [])


@pytest.mark.parametrize(("value", "host"), [
    (b"[::1]", "::1"), (b"[::1]:8443", "::1"), (b"A.B.", "a.b"), (b" a ", "a"), (b"a:1", "a"),
    (b":443", None), (b"", None), (b"a:123456", None), (b"a b", None), (b"[::1", None),
])
def test_host_of(value: bytes, host: str | None) -> None:
    assert host_of(value) == host


@pytest.mark.parametrize(("target", "host"), [
    (b"http://X.org?q", "x.org"), (b"HTTPS://x.org/a?b", "x.org"), (b"http://x.org:80", "x.org"),
])
def test_request_host_of_absolute_targets(target: bytes, host: str) -> None:
    assert request_host(target, [(b"Host", b"x.org")]) == host


def test_request_host_messages() -> None:
    with pytest.raises(BadRequest, match=r"^malformed Host header$"):
        request_host(b"/", [(b"host", b"a b")])
    with pytest.raises(BadRequest, match=r"^userinfo or fragment in the request target$"):
        request_host(b"http://u@x/", [(b"host", b"x")])
    with pytest.raises(BadRequest, match=r"^the request target names another host than Host$"):
        request_host(b"http://y/", [(b"host", b"x")])
    assert request_host(b"http://y/", []) == "y"
    with pytest.raises(BadRequest):
        request_host(b"http:///", [])


@pytest.mark.parametrize(("target", "prefixes", "needed"), [
    (b"/a", ["/"], True), (b"/a", [""], True), (b"/cps", ["/CPS/"], True), (b"/CPS/x", ["/cps"], True),
    (b"/cpsx", ["/cps/"], False), (b"/a", [], False), (b"http://h", ["/x"], False), (b"https://h/x/y", ["/x"], True),
    (b"/a/./b", ["/z"], True), (b"/a/.", ["/z"], True), (b"/a:b", ["/z"], True), (b"a", ["/z"], True),
])
def test_needs_card_more(target: bytes, prefixes: list[str], needed: bool) -> None:
    assert needs_card(target, prefixes) is needed
