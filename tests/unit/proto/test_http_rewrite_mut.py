"""sniproxy.proto.http_rewrite: the cases scripts/mutation.py found untested (issue 11), values in, values out."""

from __future__ import annotations

import dataclasses

import pytest

from sniproxy.card import UnreadableCard
from sniproxy.config.model import DEFAULT_CARD_HEADERS
from sniproxy.demo.pki import TestPki, build
from sniproxy.proto.http_rewrite import (
    CARD,
    ENVOY,
    FORWARDED,
    HOP_BY_HOP,
    NGINX,
    RFC9440,
    TOMCAT,
    BadRequest,
    Framing,
    StripRules,
    TlsFacts,
    check_framing,
    check_head,
    error_response,
    host_of,
    identity_headers,
    needs_card,
    reason_phrase,
    request_host,
    soap_version,
    strip_identity,
    without_hop_by_hop,
)
from tests.unit.proto.test_http_rewrite import _facts

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


@pytest.mark.parametrize(("head", "message"), [
    (b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n", "^bare LF in the request head$"),
    (b"GET / HTTP/1.1\r\nA: 1\rB: 2\r\n\r\n", "^bare CR in the request head$"),
    (b"GET /abc HTTP/1.1\r\nA: 1\r\n\r\n", "^request line over 16 bytes$"),
    (b"GET / HTTP/1.1\r\nA: 1\r\n b\r\n\r\n", r"^obs-fold \(a header line starting with whitespace\)$"),
    (b"GET / HTTP/1.1\r\nA: 1\r\n\tb\r\n\r\n", r"^obs-fold \(a header line starting with whitespace\)$"),
    (b"GET / HTTP/1.1\r\nA: \x7f\r\n\r\n", "^control character in the request head$"),
    (b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n", "^control character in the request head$"),
    (b"GET / HTTP/1.1\r\nA: \x0b\r\n\r\n", "^control character in the request head$"),
    (b"GET /\x1f HTTP/1.1\r\n\r\n", "^control character in the request head$"),
])
def test_check_head_refusals(head: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_head(head, 16)


def test_check_head_accepts() -> None:
    check_head(b"GET /ab HTTP/1.1\r\nA: 1\t2 \x80\r\nB:\r\n\r\n", 16)    # a 16-byte line, HTAB, obs-text
    check_head(b"GET / HTTP/1.1\r\nA: 1", 16)                             # without the blank line too


@pytest.mark.parametrize("name", [b"Content-Length", b"Host", b"Transfer-Encoding"])
def test_connection_may_name_no_framing_field(name: bytes) -> None:
    headers = [(name, b"1"), (b"Connection", b"x, " + name), (b"x", b"2")]
    with pytest.raises(BadRequest):
        without_hop_by_hop(headers)
    # (Transfer-Encoding is hop-by-hop anyway; the others are kept when a response's Connection names them)
    assert without_hop_by_hop(headers, strict=False) == ([] if name == b"Transfer-Encoding" else [(name, b"1")])


@pytest.mark.parametrize(("headers", "message"), [
    ([(b"host", b"a"), (b"Host", b"b")], r"^more than one Host \(RFC 9112 §3.2\)$"),
    ([(b"content-length", b"1"), (b"transfer-encoding", b"chunked")], "^both Content-Length and Transfer-Encoding$"),
    ([(b"content-length", b"1, 2")], "^differing Content-Length values$"),
    ([(b"content-length", b"+1")], "^Content-Length is not a number$"),
    ([(b"content-length", b",")], "^Content-Length is not a number$"),
    ([(b"transfer-encoding", b"gzip, chunked")], "^Transfer-Encoding 'gzip, chunked' \\(only chunked\\)$"),
    ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], "only chunked"),
])
def test_check_framing_refusals(headers: list[tuple[bytes, bytes]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_framing(headers)


def test_check_framing_reads() -> None:
    assert check_framing([(b"Content-Length", b"7, 7"), (b"HOST", b"h")]) == Framing(7, False, True, False)
    assert check_framing([(b"connection", b"close"), (b"connection", b"keep-alive")]).close
    assert not check_framing([(b"connection", b"closed, x")]).close
    assert check_framing([(b"connection", b" Close ")]).close


def test_value_types_are_frozen_and_slotted() -> None:
    facts = TlsFacts("a", 1, None, "v", "c", None, "", (), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.client_ip = "b"  # type: ignore[misc]
    assert not hasattr(facts, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        BARE.exact = frozenset()  # type: ignore[misc]
    assert not hasattr(BARE, "__dict__")


def test_strip_rules_build() -> None:
    rules = StripRules.build(["X_Card_A "], ["X-Corp-*", " Y_One", "Z-*"])
    assert {"x-card-a", "y-one"} <= rules.exact and not {"x-corp-", "z-*"} & rules.exact
    assert rules.prefixes[-2:] == ("x-corp-", "z-")
    assert rules.is_identity(b"z_anything") and rules.is_identity(b"X_CORP_A") and not rules.is_identity(b"zz")


def test_strip_identity_counts_and_memo_verdicts() -> None:
    rules = StripRules.build([], [])
    assert strip_identity([(b"X-Real-IP", b"1"), (b"a", b"1"), (b"x_real_ip", b"2")], rules) == ([(b"a", b"1")], 2)
    assert rules.is_identity(b"X-Real-IP") and not rules.is_identity(b"a")   # from the memo, the same verdicts
    assert rules._seen == {b"X-Real-IP": True, b"a": False, b"x_real_ip": True}


def test_memo_cleared_at_its_bound() -> None:
    rules = StripRules.build([], [])
    for i in range(512):
        rules.is_identity(b"n%d" % i)
    assert len(rules._seen) == 512
    rules.is_identity(b"one-more")
    assert rules._seen == {b"one-more": False}


@pytest.mark.parametrize(("headers", "version"), [
    ([(b"Content-Type", b"Application/SOAP+XML ; x")], "1.2"), ([(b"CONTENT-TYPE", b"TEXT/XML")], "1.1"),
    ([(b"SOAPAction", b"x"), (b"content-type", b"application/json")], "1.1"),
    ([(b"content-type", b"application/soap+xml"), (b"soapaction", b"x")], "1.2"),
    ([(b"content-type", b"text/xmlx")], None),
])
def test_soap_version_more(headers: list[tuple[bytes, bytes]], version: str | None) -> None:
    assert soap_version(headers) == version


@pytest.mark.parametrize(("head", "message"), [
    (b"GET / HTTP/1.1\r\nA: 1\n", "^bare LF in the request head$"),             # no blank line: nothing cut
    (b"GET / HTTP/1.1\r\n b\r\n\r\n", "^obs-fold"),                             # on the first field line
])
def test_check_head_edges(head: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_head(head, 16)


@pytest.mark.parametrize(("headers", "message"), [
    ([(b"transfer-encoding", b"gzip,chunked")], "^Transfer-Encoding 'gzip, chunked' \\(only chunked\\)$"),
    ([(b"content-length", b"X")], "^Content-Length is not a number$"),
])
def test_check_framing_more(headers: list[tuple[bytes, bytes]], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_framing(headers)


def test_only_connection_says_close() -> None:
    assert not check_framing([(b"x-a", b"close")]).close


def test_strip_rules_hash_and_repr_leave_out_the_memo() -> None:
    rules = StripRules.build([], [])
    rules.is_identity(b"a")
    assert hash(rules) == hash(StripRules.build([], []))
    assert "_seen" not in repr(rules)


def test_request_host_absolute_target_edges() -> None:
    with pytest.raises(BadRequest):
        request_host(b"http://x://", [(b"host", b"x")])       # the authority ends at the first "/"
    with pytest.raises(BadRequest, match=r"^userinfo or fragment"):
        request_host(b"http://x/a#f", [(b"host", b"x")])


def test_needs_card_prefix_and_absolute_edges() -> None:
    assert not needs_card(b"/a/b", ["/aX"])          # only trailing slashes are dropped from a prefix
    assert needs_card(b"https://h/a://b", ["/z"])    # the path is everything after the authority
    assert not needs_card(b"https://h/a", ["/z"]) and not needs_card(b"HTTP://h/a", ["/z"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def test_no_card_headers_for_other_profiles(pki: TestPki) -> None:
    facts = _facts(pki, "fort")
    assert identity_headers(["none-of-these"], facts, tuple(DEFAULT_CARD_HEADERS.items())) == []
