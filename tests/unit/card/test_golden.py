"""Each consumer of a card's identity gives, byte for byte, what it gave before the card module (issue 12).

``tests/data/card_golden/expected.json`` was written by the code before the refactor (identity parsed in
``tls/identity.py``, the leaf parsed again by ``proto/identity_out.py`` and ``proto/http_rewrite.py``) for
fixed certificates: the look-alike test cards (good and bad), two odd cards (EC P-384 and Ed25519 keys,
non-ASCII and RFC 4514 special characters, an unknown card type code, a UPN) and the public samples. Any
difference in a log field, a PROXY v2 byte, an HTTP header value or a login decision fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.auth.login import LoginRule, decide
from sniproxy.card.identity import CardIdentity, identity_fields, read_card
from sniproxy.config.model import DEFAULT_CARD_HEADERS, HeaderProfile
from sniproxy.proto.http_rewrite import TlsFacts, identity_headers
from sniproxy.proto.identity_out import proxy_v2_header

DATA = Path(__file__).resolve().parents[2] / "data"
GOLDEN = DATA / "card_golden"
EXPECTED: dict[str, Any] = json.loads((GOLDEN / "expected.json").read_text())
CARDS = sorted(k for k in EXPECTED if k != "<none>")
TEMPLATES = ("{idnat_ps}@mss.example", "{idnat_struct}.{upn}@x", "{serial}@x", "{card_serial}@x")
ALL_NAMES = tuple((f, "X-Card-" + f) for f in ("idnat_ps", "idnat_struct", "profession", "authority",
                                                "card_type_name", "subject", "issuer", "upn", "serial"))


def _chain(name: str) -> list[x509.Certificate]:
    path = DATA / "samples" / f"{name[len('sample-'):]}.pem" if name.startswith("sample-") else GOLDEN / f"{name}.pem"
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.mark.parametrize("name", CARDS)
def test_every_consumer_output_is_unchanged(name: str) -> None:
    want = EXPECTED[name]
    certs = _chain(name)
    leaf = certs[0]
    card = read_card(leaf, want["authority"])                                 # the one read per handshake
    assert isinstance(card, CardIdentity)
    ident = identity_fields(card)
    assert list(ident.items()) == [tuple(p) for p in want["log"]]            # the log event, in order
    facts = card.facts
    assert [facts.cn, facts.sig_alg, facts.key_alg] == want["facts"]
    for send_cn in (True, False):
        for tlvs in (True, False):
            h = proxy_v2_header(src=("192.0.2.7", 40000), dst=("127.0.0.1", 143), sni="frontimap.mssante.fr",
                                tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", card=facts,
                                send_cn=send_cn, identity=ident if tlvs else None, crc32c=tlvs)
            assert h.hex() == want["proxy_v2"][f"cn={send_cn},tlvs={tlvs}"]
    tf = TlsFacts(client_ip="2001:db8::1", client_port=4242, host="mss-msg.mssante.fr", tls_version="TLSv1.3",
                  cipher="TLS_AES_256_GCM_SHA384", cipher_bits=256, session_id="ab" * 32,
                  chain_der=tuple(c.public_bytes(Encoding.DER) for c in certs), card=card)
    http = identity_headers(list(HeaderProfile), tf, tuple(DEFAULT_CARD_HEADERS.items()) + ALL_NAMES)
    assert [[n.decode(), v.decode()] for n, v in http] == want["http"]
    for tmpl in TEMPLATES:
        d = decide(LoginRule(template=tmpl), ident, "")
        assert [d.mailbox, d.reason, d.detail] == want["login"][tmpl]
    d = decide(LoginRule(mapping={ident.get("idnat_ps", "-"): ("a@x", "b@x")}), ident, "B@X")
    assert [d.mailbox, d.reason, d.detail] == want["login"]["mapping"]
    d = decide(LoginRule(mapping={}), ident, "")
    assert [d.mailbox, d.reason, d.detail] == want["login"]["unmapped"]


def test_no_card_outputs_are_unchanged() -> None:
    want = EXPECTED["<none>"]
    tf = TlsFacts(client_ip="192.0.2.1", client_port=1, host=None, tls_version="TLSv1.2", cipher="X",
                  cipher_bits=None, session_id="", chain_der=(), card=None)
    http = identity_headers(list(HeaderProfile), tf, tuple(DEFAULT_CARD_HEADERS.items()))
    assert [[n.decode(), v.decode()] for n, v in http] == want["http"]
    h = proxy_v2_header(src=("192.0.2.7", 1), dst=("::1", 993), sni=None, tls_version="TLSv1.2", cipher="X",
                        card=None, send_cn=True, identity=None)
    assert h.hex() == want["proxy_v2"]["x"]
