"""HTTP header policy of the HTTPS reverse proxy: sans-IO, pure functions over header lists.

Owns: the raw strictness checks made before a head is parsed (bare LF, obs-fold, control characters,
framing ambiguities), hop-by-hop removal (RFC 9110 §7.6.1), the removal of every client-supplied identity
header, the identity headers added per profile, the Host / SNI flow check (421), the card-path rule
(403) and the error bodies (SOAP 1.1 / 1.2 faults or plain text).
Must not: parse HTTP itself (``http_server`` does, with llhttp) or a certificate (the values come
from the ``sniproxy.card`` identity read at the handshake), import the config or the routing
(profiles arrive as their names, routes as anything shaped like ``Routes``), do I/O, log or read a clock.

Header lists are ``[(name, value)]`` of bytes; names compare
case-insensitively, and ``_`` equals ``-`` when matching identity names, because CGI, WSGI and
several Java containers map both to the same variable (``ssl_client_cert`` vs ``SSL-Client-Cert``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape

from sniproxy.card import CardIdentity, UnreadableCard, identity_fields, openssl_dn, to_pem
from sniproxy.errors import SniproxyError

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: Connection and the fields it names, plus the classic hop-by-hop set (Keep-Alive,
# Proxy-Connection, TE, Transfer-Encoding, Upgrade, Proxy-Authenticate/-Authorization, Trailer).
# Transfer-Encoding and Content-Length framing is redone by the proxy on the other side.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding",
                        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"trailer"})

# Identity names removed from every request whatever the profiles in use: a backend configured for
# another profile later must never find a client's copy. Compared after lower-casing and ``_`` -> ``-``.
STRIP_EXACT = frozenset({"forwarded", "x-forwarded-client-cert", "client-cert", "client-cert-chain",
                         "x-real-ip", "x-client-verify", "x-client-dn", "x-arr-clientcert"})
# WebLogic (WL-Proxy-*), WebSphere ($WS*), AWS ALB mTLS (X-Amzn-Mtls-*) trust these from their front end.
STRIP_PREFIXES = ("x-forwarded-", "x-ssl-", "x-client-cert", "ssl-", "x-mss-", "wl-proxy-", "$ws", "x-amzn-mtls-")

_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")   # control characters other than HT (CR/LF checked apart)
# The control characters ``_CTL`` finds in a line, CR and LF aside (``check_head`` checks those as pairs).
_CTL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


_FRAMING = frozenset({b"content-length", b"host", b"transfer-encoding"})


class BadRequest(SniproxyError):
    """The request must be refused with ``400`` and the connection closed."""


def _norm(name: bytes | str) -> str:
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.strip().lower().replace("_", "-")


# --------------------------------------------------------------------------- strictness
def check_head(raw: bytes, max_request_line: int) -> None:
    """Refuse a request head (request line + fields + the blank line) a lenient parser would accept.

    Bare LF line ends, obs-fold and control characters in values (h11 took all three; llhttp in
    strict mode refuses most, this check runs first either way) are each a request-smuggling vector
    when two parsers disagree (RFC 9112 §2.2, §5.2, §11.2).
    Raises ``BadRequest``.
    """
    body = raw[:-4] if raw.endswith(b"\r\n\r\n") else raw
    if (body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")   # every CR and LF in a CRLF pair
            and b"\n " not in body and b"\n\t" not in body                # no line starts with SP or HT
            and len(body.translate(None, _CTL_BYTES)) == len(body)           # no control character
            and body.find(b"\r\n", 0, max_request_line + 2) >= 0):         # a short enough request line
        return   # nothing the checks below refuse: C-speed scans, no line list (every request comes here)
    if b"\n" in body.replace(b"\r\n", b""):
        raise BadRequest("bare LF in the request head")
    if b"\r" in body.replace(b"\r\n", b""):
        raise BadRequest("bare CR in the request head")
    lines = body.split(b"\r\n")
    if len(lines[0]) > max_request_line:
        raise BadRequest(f"request line over {max_request_line} bytes")
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obs-fold (a header line starting with whitespace)")
    for line in lines:
        if _CTL.search(line):
            raise BadRequest("control character in the request head")


class Framing(NamedTuple):
    """What a request head says about its body and connection, once ``check_framing`` accepted it."""

    length: int          # Content-Length (0 without one, or when chunked)
    chunked: bool        # Transfer-Encoding: chunked
    host: bool           # a Host field is present (exactly one)
    close: bool          # Connection names "close"


_FRAMING_NAMES = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


def check_framing(headers: Sequence[tuple[bytes, bytes]], *, lowered: bool = False) -> Framing:
    """Refuse ambiguous body framing (RFC 9112 §6.1, §6.3). Raises ``BadRequest``.

    Content-Length and Transfer-Encoding together, a Transfer-Encoding other than exactly one
    ``chunked``, and Content-Length values that differ are all refused outright rather than
    resolved: the backend behind may resolve them another way. One pass over the fields, so the
    request reader takes the framing from here rather than looking again. ``lowered``: the names
    are already lower-cased (the request reader's), not lower-cased again.
    """
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    hosts = 0
    close = False
    for name, value in headers:
        lname = name if lowered else name.lower()
        if lname not in _FRAMING_NAMES:   # (most fields: one set lookup, not four comparisons)
            continue
        if lname == b"host":
            hosts += 1
        elif lname == b"content-length":
            if b"," in value:
                lengths.update(v.strip() for v in value.split(b","))
            else:
                lengths.add(value.strip())
        elif lname == b"transfer-encoding":
            codings += [v.strip().lower() for v in value.split(b",")]
        elif lname == b"connection" and not close:
            close = b"close" in [v.strip().lower() for v in value.split(b",")]
    if hosts > 1:
        raise BadRequest("more than one Host (RFC 9112 §3.2)")
    if lengths and codings:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        raise BadRequest("differing Content-Length values")
    length = 0
    if lengths:
        text = next(iter(lengths))
        if not text.isdigit():   # (bytes.isdigit: ASCII digits only, False when empty)
            raise BadRequest("Content-Length is not a number")
        length = int(text)
    if codings and codings != [b"chunked"]:
        raise BadRequest(f"Transfer-Encoding {b', '.join(codings).decode('latin-1')!r} (only chunked)")
    return Framing(length, bool(codings), hosts == 1, close)


# --------------------------------------------------------------------------- header filters
def without_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], *, strict: bool = True) -> Headers:
    """Headers minus hop-by-hop fields and every field named in ``Connection`` (RFC 9110 §7.6.1).

    ``strict`` (requests): ``Connection`` naming a framing or routing field is a ``BadRequest``;
    otherwise (responses) such names are ignored, the proxy frames the response itself.
    """
    kept: Headers = []
    connection: list[bytes] = []
    for pair in headers:   # one pass; the fields Connection names are removed after it (rare)
        low = pair[0].lower()
        if low in HOP_BY_HOP:
            if low == b"connection":
                connection.append(pair[1])
        else:
            kept.append(pair)
    if not connection:   # the usual case: the fixed set only
        return kept
    named = {v.strip().lower() for value in connection for v in value.split(b",")}
    if not strict:
        named -= _FRAMING
    elif named & _FRAMING:
        # "Connection: content-length" would drop the length the proxy framed the body with.
        raise BadRequest("Connection names a framing or routing field")
    return [pair for pair in kept if pair[0].lower() not in named]


_SEEN_MAX = 512


@dataclass(frozen=True, slots=True)
class StripRules:
    """Which request header names are identity headers (removed before the proxy adds its own)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    # Names already judged (a client sends the same few names on every request of a connection):
    # bounded, since the names are the client's to choose.
    _seen: dict[bytes, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def build(cls, card_names: Iterable[str], extra: Iterable[str]) -> StripRules:
        """The built-in names, the configured card header names and ``extra`` (``prefix*`` allowed)."""
        exact = set(STRIP_EXACT) | {_norm(n) for n in card_names}
        prefixes = list(STRIP_PREFIXES)
        for item in extra:
            if item.endswith("*"):
                prefixes.append(_norm(item[:-1]))
            else:
                exact.add(_norm(item))
        return cls(frozenset(exact), tuple(prefixes))

    def is_identity(self, name: bytes) -> bool:
        """True when ``name`` is (a spelling of) an identity header."""
        seen = self._seen.get(name)
        if seen is not None:
            return seen
        n = _norm(name)
        verdict = n in self.exact or n.startswith(self.prefixes)
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen[name] = verdict
        return verdict


def strip_identity(headers: Iterable[tuple[bytes, bytes]], rules: StripRules) -> tuple[Headers, int]:
    """Remove every identity header in any case, ``_``/``-`` spelling or number of copies; return the
    remaining headers and how many were removed."""
    kept: Headers = []
    removed = 0
    for name, value in headers:
        if rules.is_identity(name):
            removed += 1
        else:
            kept.append((name, value))
    return kept, removed


def forwarded_fields(headers: Sequence[tuple[bytes, bytes]], rules: StripRules) -> tuple[Headers, int]:
    """``strip_identity(without_hop_by_hop(headers), rules)`` in one pass, for names already lower-cased
    (the request reader's); the same ``BadRequest``. A request naming fields in ``Connection`` takes the
    two-pass way (rare: the named set must be known before the first field is kept)."""
    kept: Headers = []
    removed = 0
    seen = rules._seen
    for pair in headers:
        name = pair[0]
        if name in HOP_BY_HOP:
            if name == b"connection":
                return strip_identity(without_hop_by_hop(headers), rules)
            continue
        verdict = seen.get(name)
        if verdict is None:
            verdict = rules.is_identity(name)
        if verdict:
            removed += 1
        else:
            kept.append(pair)
    return kept, removed


# --------------------------------------------------------------------------- identity out
@dataclass(frozen=True, slots=True)
class TlsFacts:
    """What the proxy knows about one client connection, for the identity headers."""

    client_ip: str
    client_port: int
    host: str | None                   # the request's Host (X-Forwarded-Host)
    tls_version: str
    cipher: str
    cipher_bits: int | None
    session_id: str
    chain_der: tuple[bytes, ...]       # verified chain, leaf first; empty without a card
    card: CardIdentity | UnreadableCard | None   # read once at the handshake (sniproxy.card.read_card)


_Named = list[tuple[str, str | bytes]]   # header name and value, before both are encoded


# The header profiles, by the names of the config's ``http.headers`` (``HeaderProfile`` values): compared
# as strings so that this module needs nothing from the config.
FORWARDED, NGINX, TOMCAT, ENVOY, RFC9440, CARD = "forwarded", "nginx", "tomcat", "envoy", "rfc9440", "card"
PROFILES = (FORWARDED, NGINX, TOMCAT, ENVOY, RFC9440, CARD)


def _readable(card: CardIdentity | UnreadableCard | None) -> CardIdentity:
    # A DN-bearing header must never go out empty or guessed: an unreadable card fails the request,
    # as the library's own error did when this module parsed the leaf itself.
    if not isinstance(card, CardIdentity):
        raise ValueError(f"card identity unreadable ({card.error if card is not None else 'none'})")
    return card


def _safe(value: str) -> bytes:
    """A card value as an ASCII header value: non-ASCII and controls percent-encoded (UTF-8)."""
    return quote(value, safe=" !#$&'()*+,-./:;=?@[]^_`{|}~").encode("ascii")


def _forwarded_node(ip: str, port: int) -> str:
    # RFC 7239 §6: an IPv6 node is bracketed and the whole value quoted.
    return f'"[{ip}]:{port}"' if ":" in ip else f'"{ip}:{port}"'


def _forwarded(facts: TlsFacts) -> _Named:
    host = f";host={_quote_token(facts.host)}" if facts.host else ""
    out: _Named = [
        ("Forwarded", f"for={_forwarded_node(facts.client_ip, facts.client_port)};proto=https{host}"),
        ("X-Forwarded-For", facts.client_ip), ("X-Forwarded-Proto", "https")]
    if facts.host:
        out.append(("X-Forwarded-Host", facts.host))
    return out


def _nginx(facts: TlsFacts) -> _Named:
    if not facts.chain_der:
        return [("X-SSL-Client-Verify", "NONE")]
    card = _readable(facts.card)
    return [("X-SSL-Client-Verify", "SUCCESS"), ("X-SSL-Client-S-DN", openssl_dn(card.subject)),
            ("X-SSL-Client-I-DN", openssl_dn(card.issuer)), ("X-SSL-Client-Serial", card.serial),
            ("X-SSL-Client-Cert", quote(to_pem(facts.chain_der[0]), safe=""))]


def _tomcat(facts: TlsFacts) -> _Named:
    out: _Named = []
    if facts.chain_der:
        # SSLValve turns spaces back into newlines (the mod_headers convention it was built for).
        out.append(("ssl_client_cert", to_pem(facts.chain_der[0]).strip().replace("\n", " ")))
    out.append(("ssl_cipher", facts.cipher))
    if facts.session_id:
        out.append(("ssl_session_id", facts.session_id))
    if facts.cipher_bits is not None:
        out.append(("ssl_cipher_usekeysize", str(facts.cipher_bits)))
    return out


def _envoy(facts: TlsFacts) -> _Named:
    card = _readable(facts.card)
    chain = "".join(to_pem(d) for d in facts.chain_der)
    subject = openssl_dn(card.subject).replace("\\", "\\\\").replace('"', '\\"')
    return [("X-Forwarded-Client-Cert",
             f'Hash={card.sha256};Cert="{quote(to_pem(facts.chain_der[0]), safe="")}";'
             f'Chain="{quote(chain, safe="")}";Subject="{subject}"')]


def _rfc9440(facts: TlsFacts) -> _Named:
    out: _Named = [("Client-Cert", f":{base64.b64encode(facts.chain_der[0]).decode()}:")]
    if len(facts.chain_der) > 1:
        out.append(("Client-Cert-Chain", ", ".join(f":{base64.b64encode(d).decode()}:" for d in facts.chain_der[1:])))
    return out


def _card(facts: TlsFacts, card_names: Sequence[tuple[str, str]]) -> _Named:
    values = identity_fields(facts.card)
    return [(name, _safe(values[field])) for field, name in card_names if values.get(field)]


def identity_headers(profiles: Iterable[str], facts: TlsFacts, card_names: Sequence[tuple[str, str]]) -> Headers:
    """The identity headers of each profile (``PROFILES`` names), in profile order (docs/https.md lists
    every value). ``card_names`` pairs an identity field (``sniproxy.card.IDENTITY_FIELDS``) with its header."""
    out: _Named = []
    with_card = bool(facts.chain_der)
    for profile in profiles:
        if profile == FORWARDED:
            out += _forwarded(facts)
        elif profile == NGINX:
            out += _nginx(facts)
        elif profile == TOMCAT:
            out += _tomcat(facts)
        elif profile == ENVOY and with_card:
            out += _envoy(facts)
        elif profile == RFC9440 and with_card:
            out += _rfc9440(facts)
        elif profile == CARD and with_card:
            out += _card(facts, card_names)
    return [(n.encode("ascii"), v if isinstance(v, bytes) else v.encode("ascii")) for n, v in out]


# The grammar h11 writes a field with (h11/_abnf.py: a token, then a value of visible bytes or obs-text
# with inner spaces/tabs only: no NUL, CR, LF, no leading or trailing whitespace). Identity headers are
# checked with it once per connection, so each request head can go to h11 as already parsed instead of
# being run through h11's regexes again (they were 15% of the proxy's CPU on small requests).
_FIELD_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")


def check_fields(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Raise ``BadRequest`` unless every field is one h11 would write (same grammar as h11's own check)."""
    for name, value in headers:
        if _FIELD_NAME.fullmatch(name) is None:
            raise BadRequest(f"illegal header name {name[:40]!r}")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise BadRequest(f"illegal value in header {name[:40]!r}")


def _quote_token(value: str) -> str:
    # RFC 7239 §4: a value that is not a token is a quoted-string.
    if re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- routing checks
# A Host value: a reg-name, an IPv4 address or a bracketed IPv6 literal, and an optional port (RFC 9110
# §7.2). Anything else (a second colon, a comma list, userinfo, a fragment) is read differently by
# different backends, so it is refused rather than guessed at.
_HOST_VALUE = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+;=-]*)(:[0-9]{1,5})?")


def host_of(value: bytes) -> str | None:
    """The host of a Host value or authority, lower-case, without port or trailing dot; None if malformed."""
    value = value.strip()
    m = _HOST_VALUE.fullmatch(value)
    if m is None or not m.group(1):
        return None
    host = m.group(1).decode("ascii").lower()
    return host[1:-1] if host.startswith("[") else host.rstrip(".")


def request_host(target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The host the request names (see ``host_of``); raises ``BadRequest`` when it is ambiguous.

    Host must be well-formed, and an absolute-form target must name the same host as Host:
    backends differ on which of the two they route by (RFC 9112 §3.2.2 says the target).
    """
    values = [value.strip() for name, value in headers if name.lower() == b"host"]
    host = host_of(values[0]) if values and values[0] else None     # empty: allowed, names no host
    if values and values[0] and host is None:
        raise BadRequest("malformed Host header")
    low = target[:8].lower()
    if low.startswith((b"https://", b"http://")):
        authority = target.split(b"://", 1)[1]
        for stop in (b"/", b"?"):
            authority = authority.split(stop, 1)[0]
        if b"@" in authority or b"#" in target:
            raise BadRequest("userinfo or fragment in the request target")
        named = host_of(authority)
        if named is None or (host is not None and named != host):
            raise BadRequest("the request target names another host than Host")
        return named
    return host


class Routes(Protocol):
    """The part of a listener's route table the Host check reads (``sniproxy.routing.RouteTable`` has it)."""

    @property
    def exact(self) -> Mapping[str, str]:
        """Exact host name -> flow."""

    @property
    def wildcards(self) -> Mapping[str, str]:
        """Parent domain (after ``*.``) -> flow."""


def misdirected(host: str | None, routes: Routes, flow: str) -> str | None:
    """The other flow ``host`` is routed to on this listener, when it is not ``flow`` (then 421).

    Only names the listener routes count (exact, then wildcard): an IP literal or an unrouted name
    is the flow the handshake chose, as it would be for a client without SNI.
    """
    if host is None:
        return None
    other = routes.exact.get(host)
    if other is None:
        _, dot, parent = host.partition(".")
        other = routes.wildcards.get(parent) if dot else None
    return other if other is not None and other != flow else None


# Anything a backend may decode or normalize into another path: percent-encoding, path parameters
# (Tomcat, Jetty), repeated slashes, dot segments, backslashes, colons. Such a path needs a card
# whatever it looks like: it fails closed rather than guess what the backend will make of it.
_NOT_PLAIN = re.compile(rb"[%;\\:#]|//|(^|/)\.\.?(/|$)")


def needs_card(target: bytes, prefixes: Sequence[str]) -> bool:
    """True when the request path falls under one of ``prefixes`` (segment-wise, case-insensitive), or is not plain."""
    path = target.split(b"?", 1)[0]
    low = path[:8].lower()
    if low.startswith((b"https://", b"http://")):
        path = b"/" + path.split(b"://", 1)[1].partition(b"/")[2]
    if _NOT_PLAIN.search(path) or not path.startswith(b"/"):
        return True
    text = path.decode("latin-1").lower()
    for prefix in prefixes:
        p = prefix.rstrip("/").lower()
        if not p or text == p or text.startswith(p + "/"):
            return True
    return False


# --------------------------------------------------------------------------- error bodies
_REASONS = {400: "Bad Request", 403: "Forbidden", 421: "Misdirected Request", 502: "Bad Gateway",
            504: "Gateway Timeout"}


def soap_version(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """``"1.2"`` for ``application/soap+xml``, ``"1.1"`` for a request with ``SOAPAction`` or a
    ``text/xml`` body, else None (not SOAP: plain-text errors)."""
    ctype = b""
    action = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-type":
            ctype = value.split(b";", 1)[0].strip().lower()
        elif lname == b"soapaction":
            action = True
    if ctype == b"application/soap+xml":
        return "1.2"
    if action or ctype == b"text/xml":
        return "1.1"
    return None


def error_response(status: int, message: str, soap: str | None) -> tuple[Headers, bytes]:
    """Headers and body of an error the proxy answers itself; ``Connection: close`` always."""
    text = escape(message)
    if soap == "1.2":
        code = "env:Sender" if status < 500 else "env:Receiver"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>'
                f'<env:Code><env:Value>{code}</env:Value></env:Code>'
                f'<env:Reason><env:Text xml:lang="en">{text}</env:Text></env:Reason>'
                '</env:Fault></env:Body></env:Envelope>\n')
        ctype = b"application/soap+xml; charset=utf-8"
    elif soap == "1.1":
        code = "soap:Client" if status < 500 else "soap:Server"
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
                f'<faultcode>{code}</faultcode><faultstring>{text}</faultstring>'
                '</soap:Fault></soap:Body></soap:Envelope>\n')
        ctype = b"text/xml; charset=utf-8"
    else:
        body = f"{status} {_REASONS.get(status, 'Error')}: {message}\n"
        ctype = b"text/plain; charset=utf-8"
    data = body.encode("utf-8")
    return [(b"content-type", ctype), (b"content-length", str(len(data)).encode()),
            (b"connection", b"close")], data


def reason_phrase(status: int) -> bytes:
    """The reason phrase the proxy writes for its own statuses."""
    return _REASONS.get(status, "Error").encode()
