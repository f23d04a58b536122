"""sniproxy.card as its consumers see it: the one read per handshake, its fallbacks, the DN text forms, and the
import rules that keep the card module a leaf and proto/ free of config, routing and tls."""

from __future__ import annotations

import ast
import base64
import dataclasses
import weakref
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sniproxy.card import NO_FACTS, CardIdentity, UnreadableCard, identity_fields, read_card
from sniproxy.card.identity import card_facts, parse_identity
from sniproxy.card.names import dn, openssl_dn
from sniproxy.card.oids import CARD_TYPES, CardType
from sniproxy.config.model import DEFAULT_CARD_HEADERS, HeaderProfile
from sniproxy.config.model import CardType as ConfigCardType
from sniproxy.proto.http_rewrite import PROFILES, TlsFacts, identity_headers
from sniproxy.proto.identity_out import proxy_v2_header

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "data" / "card_golden"


def _leaf(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates((GOLDEN / f"{name}.pem").read_bytes())[0]


class _Delegate:
    """A certificate that answers like ``cert`` except for the attributes in ``broken``, which raise."""

    def __init__(self, cert: x509.Certificate, broken: dict[str, Exception]) -> None:
        self._cert, self._broken = cert, broken

    def __getattr__(self, name: str) -> Any:
        if name in self._broken:
            raise self._broken[name]
        return getattr(self._cert, name)


def test_read_card_is_parse_identity_with_the_proxy_facts() -> None:
    leaf = _leaf("fort")
    card = read_card(leaf, "igc-sante-fort-pp")
    assert card == parse_identity(leaf, "igc-sante-fort-pp")
    assert isinstance(card, CardIdentity) and card.facts == card_facts(leaf)
    assert card.facts.cn == card.idnat_ps and card.facts.sig_alg == "RSA-SHA256"
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.idnat_ps = "x"  # type: ignore[misc]
    assert not hasattr(card, "__dict__")          # slotted: one per connection, for hours
    assert weakref.ref(card)() is card            # shared by the connections with this card (driver.shared)


def test_an_unnameable_signature_algorithm_gives_no_facts_but_the_identity() -> None:
    leaf = _leaf("fort")
    odd = cast(x509.Certificate, _Delegate(leaf, {"signature_hash_algorithm": UnsupportedAlgorithm("x")}))
    card = read_card(odd, "a")
    assert isinstance(card, CardIdentity)
    assert card.facts == NO_FACTS and card.facts.cn is None     # the SSL flags, no CN: as before
    assert identity_fields(card) == identity_fields(read_card(leaf, "a"))


def test_a_certificate_the_reader_fails_on_is_an_unreadable_card() -> None:
    odd = cast(x509.Certificate, _Delegate(_leaf("fort"), {"subject": ValueError("bad name")}))
    card = read_card(odd, "a")
    assert card == UnreadableCard("ValueError") and card.facts == NO_FACTS
    assert identity_fields(card) == {"parse_error": "ValueError"}
    assert identity_fields(None) == {}


def test_an_unreadable_card_in_each_consumer() -> None:
    card = UnreadableCard("ValueError")
    h = proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni=None, tls_version="TLSv1.3",
                        cipher="X", card=card.facts, send_cn=True, identity=identity_fields(card))
    none = proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni=None, tls_version="TLSv1.3",
                           cipher="X", card=NO_FACTS, send_cn=True, identity=None)
    assert h == none                               # certificate flags, no CN, no identity TLV
    chain = (_leaf("fort").public_bytes(Encoding.DER),)
    facts = TlsFacts(client_ip="192.0.2.7", client_port=1, host=None, tls_version="TLSv1.3", cipher="X",
                     cipher_bits=None, session_id="", chain_der=chain, card=card)
    # Headers without a DN still go; a DN-bearing one fails the request rather than go out guessed.
    assert dict(identity_headers(["rfc9440", "card"], facts, tuple(DEFAULT_CARD_HEADERS.items()))) == {
        b"Client-Cert": b":" + base64.b64encode(chain[0]) + b":"}
    for profile in ("nginx", "envoy"):
        with pytest.raises(ValueError, match="unreadable"):
            identity_headers([profile], facts, ())


def test_openssl_dn_escapes_what_is_not_printable_ascii() -> None:
    assert openssl_dn("CN=Zoé,O=A\\,B") == "CN=Zo\\C3\\A9,O=A\\,B"
    assert openssl_dn("CN=\x7f\x1f") == "CN=\\7F\\1F"
    assert openssl_dn("CN=日") == "CN=\\E6\\97\\A5"
    leaf = _leaf("odd-ec-p384")
    assert dn(leaf.subject).startswith("GN=Zoé+SN=D'ARC+CN=30B0057881/CPET0002,title=")
    assert openssl_dn(dn(leaf.subject)).isascii()


def test_the_card_types_are_the_config_vocabulary() -> None:
    assert ConfigCardType is CardType
    assert dict(CARD_TYPES) == {0: CardType.CPS, 1: CardType.CPF, 2: CardType.CPE, 3: CardType.CPA}


def test_the_http_profiles_are_the_config_header_profiles() -> None:
    assert PROFILES == tuple(p.value for p in HeaderProfile)


# --------------------------------------------------------------------------- import rules
def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _sniproxy_imports(package: str) -> dict[str, set[str]]:
    return {p.name: {m for m in _imports(p) if m.split(".")[0] == "sniproxy"}
            for p in sorted((ROOT / "sniproxy" / package).glob("*.py"))}


def test_the_card_module_is_a_leaf() -> None:
    for module, names in _sniproxy_imports("card").items():
        assert all(n == "sniproxy.errors" or n.startswith("sniproxy.card") for n in names), (module, names)
        third = {m.split(".")[0] for m in _imports(ROOT / "sniproxy" / "card" / module)} - {"sniproxy"}
        assert third <= {"__future__", "base64", "collections", "dataclasses", "datetime", "enum", "hashlib",
                         "pathlib", "re", "types", "typing", "cryptography"}, (module, third)


@pytest.mark.parametrize("module", ["identity_out.py", "http_rewrite.py"])
def test_the_card_consumers_in_proto_import_nothing_above_proto(module: str) -> None:
    names = _sniproxy_imports("proto")[module]
    assert all(n in ("sniproxy.card", "sniproxy.errors") or n.startswith(("sniproxy.proto", "sniproxy.card."))
               for n in names), names


def test_a_violation_would_be_seen(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from sniproxy.config.model import HeaderProfile\nimport sniproxy.routing\n")
    assert _imports(bad) == {"sniproxy.config.model", "sniproxy.routing"}


def test_the_small_card_types_are_frozen_and_slotted() -> None:
    unreadable = UnreadableCard("ValueError")
    assert not hasattr(NO_FACTS, "__dict__") and not hasattr(unreadable, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        NO_FACTS.cn = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        unreadable.error = "x"  # type: ignore[misc]


def _signed_by_itself(key: Any, digest: hashes.HashAlgorithm | None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "810001234567")])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, digest))


@pytest.mark.parametrize(("kind", "sig_alg", "key_alg"), [
    ("dsa", None, "DSA2048"),            # OpenSSL names dsa_with_SHA256 otherwise than HAProxy: none sent
    ("ed448", None, "ED448"),
    ("ed25519", "ED25519", "ED25519"),
    ("p256", "ecdsa-with-SHA256", "EC256"),
])
def test_card_facts_per_key_type(kind: str, sig_alg: str | None, key_alg: str) -> None:
    keys: dict[str, tuple[Any, hashes.HashAlgorithm | None]] = {
        "dsa": (dsa.generate_private_key(2048), hashes.SHA256()), "ed448": (ed448.Ed448PrivateKey.generate(), None),
        "ed25519": (ed25519.Ed25519PrivateKey.generate(), None), "p256": (ec.generate_private_key(ec.SECP256R1()),
                                                                         hashes.SHA256())}
    facts = card_facts(_signed_by_itself(*keys[kind]))
    assert (facts.cn, facts.sig_alg, facts.key_alg) == ("810001234567", sig_alg, key_alg)
