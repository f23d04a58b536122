"""Card authorization rules of ``sniproxy.tls.verify``, without sockets.

Chains come from the generated test PKI (loaded with ``cryptography``); ``authorize`` and
``verify_callback`` are called directly with a ``VerifyState`` the way OpenSSL's callback would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

from sniproxy.config.model import CardType, Profile
from sniproxy.crl.prepare import prepare
from sniproxy.crl.state import IssuerState, LoadedCrl, RevocationHolder, RevocationPolicy, RevocationView
from sniproxy.crl.validate import ca_key
from sniproxy.demo.crls import load_cert, load_key, make_crl
from sniproxy.demo.pki import OID_CARD_TYPE, OID_CATEGORY, TestPki, build, resign_sha1
from sniproxy.errors import Reason
from sniproxy.tls.verify import (
    AuthorityTrust,
    FlowRules,
    VerifyState,
    authorize,
    compile_authority,
    verify_callback,
    weak_crypto,
)

# X509_V_ERR codes used below (openssl/x509_vfy.h)
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
CERT_HAS_EXPIRED = 10
CERT_NOT_YET_VALID = 9
INVALID_PURPOSE = 26
CERT_SIGNATURE_FAILURE = 7
CERT_CHAIN_TOO_LONG = 22
EE_KEY_TOO_SMALL = 66
CA_KEY_TOO_SMALL = 67
CA_MD_TOO_WEAK = 68
UNHANDLED = 9999


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki-verify"))


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture(scope="session")
def trust(pki: TestPki) -> dict[str, AuthorityTrust]:
    out = {}
    for name, files in pki.authorities.items():
        roots = [c for p in files.roots for c in _certs(p)]
        inter = [c for p in files.intermediates for c in _certs(p)]
        out[name] = compile_authority(name, name.endswith("-test"), roots, inter)
    return out


@dataclass
class Card:
    leaf: x509.Certificate
    issuer: x509.Certificate | None


@pytest.fixture(scope="session")
def cards(pki: TestPki) -> dict[str, Card]:
    out = {}
    for name, kp in pki.cards.items():
        chain = _certs(kp.chain)
        out[name] = Card(chain[0], chain[1] if len(chain) > 1 else None)
    return out


@pytest.fixture(scope="session")
def roots(pki: TestPki) -> dict[str, x509.Certificate]:
    return {name: _certs(files.roots[0])[0] for name, files in pki.authorities.items()}


PRODUCTION_SETS = ("igc-cps-2ter", "igc-sante-fort-pp", "igc-sante-standard-pp")
TEST_SETS = tuple(f"{s}-test" for s in PRODUCTION_SETS)


def _state(trust: dict[str, AuthorityTrust], sets: tuple[str, ...], *,
           profile: Profile = Profile.PRODUCTION, card_types: frozenset[CardType] = frozenset(),
           refuse_test_cards: bool = True) -> VerifyState:
    rules = FlowRules(flow="2bis", profile=profile, authorities=tuple(trust[s] for s in sets),
                      card_types=card_types, refuse_test_cards=refuse_test_cards, require_cert=True)
    return VerifyState(rules)


def _run(state: VerifyState, card: Card, root: x509.Certificate | None = None) -> bool:
    """What OpenSSL would have put in the state before depth 0: root (2), intermediate (1), leaf (0)."""
    if root is not None:
        state.chain[2] = root
    if card.issuer is not None:
        state.chain[1] = card.issuer
    state.chain[0] = card.leaf
    return authorize(state, card.leaf)


# --------------------------------------------------------------------------- authorize()
@pytest.mark.parametrize(("card", "authority"), [
    ("cps-2ter", "igc-cps-2ter"),
    ("fort", "igc-sante-fort-pp"),
    ("fort-liberal", "igc-sante-fort-pp"),
])
def test_good_card_accepted(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                            card: str, authority: str) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, cards[card]) is True
    assert state.reason is None
    assert state.detail == ""
    assert state.authority == authority


def test_good_card_with_root_in_chain(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                      roots: dict[str, x509.Certificate]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, cards["fort"], roots["igc-sante-fort-pp"]) is True
    assert state.authority == "igc-sante-fort-pp"


def test_card_from_set_not_in_flow_is_unknown_ca(trust: dict[str, AuthorityTrust],
                                                 cards: dict[str, Card]) -> None:
    state = _state(trust, ("igc-cps-2ter",))
    assert _run(state, cards["fort"]) is False
    assert state.reason is Reason.UNKNOWN_CA
    assert state.authority is None
    assert state.detail


def test_rogue_card_is_unknown_ca(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, cards["unknown-ca"]) is False
    assert state.reason is Reason.UNKNOWN_CA


def test_test_authority_on_production_is_test_chain(trust: dict[str, AuthorityTrust],
                                                    cards: dict[str, Card]) -> None:
    state = _state(trust, (*PRODUCTION_SETS, "igc-sante-fort-pp-test"), refuse_test_cards=False)
    assert _run(state, cards["test-fort"]) is False
    assert state.reason is Reason.TEST_CHAIN
    assert state.authority == "igc-sante-fort-pp-test"
    assert "igc-sante-fort-pp-test" in state.detail


def test_production_authority_on_test_profile_is_production_chain(trust: dict[str, AuthorityTrust],
                                                                  cards: dict[str, Card]) -> None:
    state = _state(trust, (*TEST_SETS, "igc-sante-fort-pp"), profile=Profile.TEST, refuse_test_cards=False)
    assert _run(state, cards["fort"]) is False
    assert state.reason is Reason.PRODUCTION_CHAIN
    assert state.authority == "igc-sante-fort-pp"


def test_test_card_on_test_profile_accepted(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    # test-fort has category 0x80 (a test card): the test profile must not refuse it for that.
    state = _state(trust, TEST_SETS, profile=Profile.TEST, refuse_test_cards=False)
    assert _run(state, cards["test-fort"]) is True
    assert state.reason is None
    assert state.authority == "igc-sante-fort-pp-test"


@pytest.mark.parametrize("card", ["wrong-eku", "wrong-ku"])
def test_wrong_usage(trust: dict[str, AuthorityTrust], cards: dict[str, Card], card: str) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, cards[card]) is False
    assert state.reason is Reason.WRONG_USAGE
    assert "clientAuth" in state.detail


def test_test_category_refused_when_asked(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, refuse_test_cards=True)
    assert _run(state, cards["test-category"]) is False
    assert state.reason is Reason.TEST_CARD
    assert "0x80" in state.detail


def test_test_category_accepted_when_allowed(trust: dict[str, AuthorityTrust],
                                             cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, refuse_test_cards=False)
    assert _run(state, cards["test-category"]) is True
    assert state.reason is None


def test_category_zero_not_a_test_card(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, refuse_test_cards=True)
    assert _run(state, cards["fort"]) is True


def test_cpe_refused_on_cps_only_flow(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPS}))
    assert _run(state, cards["standard-cpe"]) is False
    assert state.reason is Reason.CARD_TYPE
    assert "CPE" in state.detail


def test_cpe_accepted_when_cpe_allowed(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPS, CardType.CPE}))
    assert _run(state, cards["standard-cpe"]) is True
    assert state.authority == "igc-sante-standard-pp"


def test_cpf_accepted_when_cpf_allowed(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPF}))
    assert _run(state, cards["cpf"]) is True
    assert state.reason is None


def test_cpf_refused_on_cps_only_flow(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPS}))
    assert _run(state, cards["cpf"]) is False
    assert state.reason is Reason.CARD_TYPE


def test_cps_accepted_on_cps_only_flow(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPS}))
    assert _run(state, cards["cps-2ter"]) is True


def test_any_card_type_when_none_listed(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    for name in ("cps-2ter", "cpf", "standard-cpe"):
        state = _state(trust, PRODUCTION_SETS)
        assert _run(state, cards[name]) is True, name


def test_first_refusal_is_kept(trust: dict[str, AuthorityTrust]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert state.refuse(Reason.EXPIRED, "first") is False
    assert state.refuse(Reason.CARD_TYPE, "second") is False
    assert state.reason is Reason.EXPIRED
    assert state.detail == "first"


def test_authorize_does_not_overwrite_earlier_refusal(trust: dict[str, AuthorityTrust],
                                                      cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPS}))
    state.refuse(Reason.REVOKED, "revoked at depth 1")
    assert _run(state, cards["standard-cpe"]) is False
    assert state.reason is Reason.REVOKED
    assert state.detail == "revoked at depth 1"


# --------------------------------------------------------------------------- verify_callback()
class FakeConn:
    """The one method of ``SSL.Connection`` the callback uses."""

    def __init__(self, state: object) -> None:
        self._state = state

    def get_app_data(self) -> object:
        return self._state


def _x(cert: x509.Certificate) -> crypto.X509:
    return crypto.X509.from_cryptography(cert)


def _callback(state: object, cert: x509.Certificate, errno: int, depth: int, ok: int) -> bool:
    return verify_callback(FakeConn(state), _x(cert), errno, depth, ok)  # type: ignore[arg-type]


def test_callback_walks_chain_then_authorizes(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                              roots: dict[str, x509.Certificate]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    card = cards["fort"]
    assert card.issuer is not None
    assert _callback(state, roots["igc-sante-fort-pp"], 0, 2, 1) is True
    assert _callback(state, card.issuer, 0, 1, 1) is True
    assert state.called is True
    assert state.reason is None
    assert _callback(state, card.leaf, 0, 0, 1) is True
    assert state.authority == "igc-sante-fort-pp"
    assert set(state.chain) == {0, 1, 2}
    assert state.chain[0] == card.leaf


def test_callback_authorize_refusal_at_leaf(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    card = cards["wrong-eku"]
    assert card.issuer is not None
    assert _callback(state, card.issuer, 0, 1, 1) is True
    assert _callback(state, card.leaf, 0, 0, 1) is False
    assert state.reason is Reason.WRONG_USAGE


def test_callback_unknown_issuer_of_test_chain_on_production(trust: dict[str, AuthorityTrust],
                                                             cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _callback(state, cards["test-fort"].leaf, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, 0, 0) is False
    assert state.reason is Reason.TEST_CHAIN
    assert "X509_V_ERR 20" in state.detail
    assert "depth 0" in state.detail


def test_callback_unknown_issuer_of_production_chain_on_test(trust: dict[str, AuthorityTrust],
                                                             cards: dict[str, Card]) -> None:
    state = _state(trust, TEST_SETS, profile=Profile.TEST, refuse_test_cards=False)
    assert _callback(state, cards["fort"].leaf, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, 0, 0) is False
    assert state.reason is Reason.PRODUCTION_CHAIN


def test_callback_rogue_chain_on_production_is_unknown_ca(trust: dict[str, AuthorityTrust],
                                                         cards: dict[str, Card]) -> None:
    # The rogue CA names carry no TEST word: on production that is a plain unknown CA, not test_chain.
    state = _state(trust, PRODUCTION_SETS)
    assert _callback(state, cards["unknown-ca"].leaf, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, 0, 0) is False
    assert state.reason is Reason.UNKNOWN_CA


@pytest.mark.parametrize(("errno", "reason"), [
    (CERT_HAS_EXPIRED, Reason.EXPIRED),
    (CERT_NOT_YET_VALID, Reason.NOT_YET_VALID),
    (INVALID_PURPOSE, Reason.WRONG_USAGE),
    (EE_KEY_TOO_SMALL, Reason.WEAK_KEY),
    (CA_KEY_TOO_SMALL, Reason.WEAK_KEY),
    (CA_MD_TOO_WEAK, Reason.WEAK_SIGNATURE),
    (CERT_SIGNATURE_FAILURE, Reason.BAD_CERTIFICATE),
    (CERT_CHAIN_TOO_LONG, Reason.CHAIN_TOO_DEEP),
    (UNHANDLED, Reason.BAD_CERTIFICATE),
])
def test_callback_maps_openssl_errors(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                      errno: int, reason: Reason) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _callback(state, cards["expired"].leaf, errno, 0, 0) is False
    assert state.reason is reason


def test_callback_keeps_first_error_of_the_chain(trust: dict[str, AuthorityTrust],
                                                 cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    card = cards["expired"]
    assert card.issuer is not None
    assert _callback(state, card.issuer, CERT_NOT_YET_VALID, 1, 0) is False
    assert _callback(state, card.leaf, CERT_HAS_EXPIRED, 0, 0) is False
    assert state.reason is Reason.NOT_YET_VALID
    assert "depth 1" in state.detail


def test_callback_without_state_refuses(cards: dict[str, Card]) -> None:
    assert _callback(None, cards["fort"].leaf, 0, 0, 1) is False


# --------------------------------------------------------------------------- weak cryptography in the chain
@pytest.mark.parametrize(("card", "reason", "detail"), [
    ("sha1", Reason.WEAK_SIGNATURE, "SHA1 signature at depth 0"),
    ("rsa1024", Reason.WEAK_KEY, "1024-bit RSA key at depth 0"),
])
def test_weak_card_refused_by_authorize_whatever_the_openssl_level(trust: dict[str, AuthorityTrust],
                                                                  cards: dict[str, Card], card: str,
                                                                  reason: Reason, detail: str) -> None:
    # authorize() runs only once OpenSSL accepted the chain: at security level 0 it would have.
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, cards[card]) is False
    assert state.reason is reason and state.detail == detail


def _self_signed(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, digest: hashes.HashAlgorithm,
                 issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] | None = None,
                 cn: str = "weak") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(signer, digest))


def test_weak_crypto_rules() -> None:
    strong_rsa = rsa.generate_private_key(65537, 2048)
    p256, p192 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP192R1())
    root = _self_signed(strong_rsa, hashes.SHA256(), cn="root")
    # strong: RSA 2048 / P-256 / SHA-256 everywhere
    leaf = _self_signed(p256, hashes.SHA256(), (root.subject, strong_rsa), cn="leaf")
    assert weak_crypto({0: leaf, 1: root}) is None
    # a P-192 card key is weak even though its chain is fine
    weak_ec = _self_signed(p192, hashes.SHA256(), (root.subject, strong_rsa), cn="leaf")
    assert weak_crypto({0: weak_ec, 1: root}) == (Reason.WEAK_KEY, "192-bit EC key (secp192r1) at depth 0")
    # a weak key at depth 1 (the intermediate) is found too
    weak_inter = _self_signed(p192, hashes.SHA256(), (root.subject, strong_rsa), cn="inter")
    assert weak_crypto({0: leaf, 1: weak_inter, 2: root}) == \
        (Reason.WEAK_KEY, "192-bit EC key (secp192r1) at depth 1")


def test_weak_crypto_ignores_the_anchors_self_signature(pki: TestPki) -> None:
    # A SHA-1 self-signature on the top certificate proves nothing either way (it is trusted by
    # configuration): not a refusal. The same digest anywhere below is.
    files = pki.authorities["igc-sante-fort-pp"]
    key = serialization.load_pem_private_key(files.root_keys[0].read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    root = _certs(files.roots[0])[0]
    leaf = _certs(pki.cards["fort"].cert)[0]
    sha1_root = resign_sha1(root, key)
    assert weak_crypto({0: leaf, 1: sha1_root}) is None
    sha1_card = _certs(pki.cards["sha1"].cert)[0]
    assert weak_crypto({0: sha1_card, 1: sha1_root}) == (Reason.WEAK_SIGNATURE, "SHA1 signature at depth 0")


# --------------------------------------------------------------------------- mutation testing (issue 11)
# Each test below fails against a mutant of verify.py that the suite let through before. Cards are rebuilt
# in code from the test PKI's: authorize() reads a chain OpenSSL already verified, so the signer of a
# rebuilt card does not matter, only its content does.
_SHA256_RSA = bytes.fromhex("2a864886f70d01010b")


def _reissue(leaf: x509.Certificate, *, drop: tuple[x509.ObjectIdentifier, ...] = (),
             add: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    """``leaf`` with the extensions ``drop`` removed and ``add`` added (same subject, issuer, key)."""
    b = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
         .public_key(leaf.public_key()).serial_number(leaf.serial_number)
         .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
    for ext in leaf.extensions:
        if ext.oid not in drop and ext.oid not in {a.oid for a in add}:
            b = b.add_extension(ext.value, ext.critical)
    for value in add:
        b = b.add_extension(value, critical=False)
    return b.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())


def _card(card: Card, leaf: x509.Certificate) -> Card:
    return Card(leaf, card.issuer)


def test_card_without_eku_extension_is_refused(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    leaf = _reissue(cards["fort"].leaf, drop=(x509.ExtendedKeyUsage.oid,))
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, _card(cards["fort"], leaf)) is False
    assert state.reason is Reason.WRONG_USAGE and state.detail == "no extended key usage extension"


def test_card_without_digital_signature_is_refused(trust: dict[str, AuthorityTrust],
                                                   cards: dict[str, Card]) -> None:
    ku = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=True,
                       data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                       encipher_only=False, decipher_only=False)
    leaf = _reissue(cards["fort"].leaf, add=(ku,))
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, _card(cards["fort"], leaf)) is False
    assert state.reason is Reason.WRONG_USAGE and state.detail == "key usage lacks digitalSignature"


def test_card_without_key_usage_extension_is_accepted(trust: dict[str, AuthorityTrust],
                                                      cards: dict[str, Card]) -> None:
    # RFC 5280: no keyUsage means any usage; the EKU still has to say clientAuth.
    leaf = _reissue(cards["fort"].leaf, drop=(x509.KeyUsage.oid,))
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, _card(cards["fort"], leaf)) is True and state.reason is None


def _with_signature_oid(cert: x509.Certificate, last: int) -> x509.Certificate:
    """``cert`` claiming the RSA signature algorithm 1.2.840.113549.1.1.<last> (signature left as is)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(_SHA256_RSA) == 2
    return x509.load_der_x509_certificate(der.replace(_SHA256_RSA, _SHA256_RSA[:-1] + bytes([last])))


@pytest.mark.parametrize(("last", "name"), [(2, "MD2"), (3, "MD4"), (4, "MD5"), (5, "SHA1")])
def test_every_weak_digest_is_refused(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                      roots: dict[str, x509.Certificate], last: int, name: str) -> None:
    fort = cards["fort"]
    assert fort.issuer is not None
    root = roots["igc-sante-fort-pp"]
    weak_leaf = _with_signature_oid(fort.leaf, last)
    assert weak_crypto({0: weak_leaf, 1: fort.issuer, 2: root}) == \
        (Reason.WEAK_SIGNATURE, f"{name} signature at depth 0")
    # the intermediate's signature is judged too (only the anchor's self-signature is not)
    weak_inter = _with_signature_oid(fort.issuer, last)
    assert weak_crypto({0: fort.leaf, 1: weak_inter, 2: root}) == \
        (Reason.WEAK_SIGNATURE, f"{name} signature at depth 1")
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, _card(fort, weak_leaf)) is False
    assert state.reason is Reason.WEAK_SIGNATURE


@pytest.mark.parametrize("last", [11, 12, 13])                   # SHA-256, SHA-384, SHA-512 with RSA
def test_strong_digests_are_not_weak(cards: dict[str, Card], roots: dict[str, x509.Certificate], last: int) -> None:
    fort = cards["fort"]
    assert fort.issuer is not None
    assert weak_crypto({0: _with_signature_oid(fort.leaf, last), 1: fort.issuer,
                        2: roots["igc-sante-fort-pp"]}) is None


def test_nearest_ca_decides_the_authority_set_when_two_share_a_root(cards: dict[str, Card],
                                                                   roots: dict[str, x509.Certificate]) -> None:
    """Two sets anchored in the same root: the intermediate that issued the card names the set."""
    root = roots["igc-sante-fort-pp"]
    fort, std = cards["fort"], cards["standard-cpe"]
    assert fort.issuer is not None and std.issuer is not None
    set_a = compile_authority("shared-a", False, [root], [fort.issuer])
    set_b = compile_authority("shared-b", False, [root], [std.issuer])
    for order in ((set_a, set_b), (set_b, set_a)):
        for card, expected in ((std, "shared-b"), (fort, "shared-a")):
            rules = FlowRules(flow="2bis", profile=Profile.PRODUCTION, authorities=order, card_types=frozenset(),
                              refuse_test_cards=True, require_cert=True)
            state = VerifyState(rules)
            assert _run(state, card, root) is True
            assert state.authority == expected


def test_a_test_set_sharing_a_production_root_is_still_a_test_chain(cards: dict[str, Card],
                                                                     roots: dict[str, x509.Certificate]) -> None:
    root = roots["igc-sante-fort-pp"]
    fort, std = cards["fort"], cards["standard-cpe"]
    assert fort.issuer is not None and std.issuer is not None
    prod = compile_authority("prod", False, [root], [fort.issuer])
    test = compile_authority("test", True, [root], [std.issuer])
    rules = FlowRules(flow="2bis", profile=Profile.PRODUCTION, authorities=(prod, test), card_types=frozenset(),
                      refuse_test_cards=False, require_cert=True)
    state = VerifyState(rules)
    assert _run(state, std, root) is False
    assert state.reason is Reason.TEST_CHAIN and state.authority == "test"


@pytest.mark.parametrize("der", [b"\x02\x01\x80", b"\x04\x02\x00\x00", b"\x04\x00", b"", b"\x04\x05\x00"])
def test_unreadable_product_category_fails_closed(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                                  der: bytes) -> None:
    leaf = _reissue(cards["fort"].leaf, add=(x509.UnrecognizedExtension(OID_CATEGORY, der),))
    state = _state(trust, PRODUCTION_SETS, refuse_test_cards=True)
    assert _run(state, _card(cards["fort"], leaf)) is False
    assert state.reason is Reason.TEST_CARD and state.detail == "unreadable product category extension"
    # where test cards are welcome, the category is not read at all
    assert _run(_state(trust, PRODUCTION_SETS, refuse_test_cards=False), _card(cards["fort"], leaf)) is True


@pytest.mark.parametrize(("category", "test_card"), [(0x00, False), (0x01, False), (0x40, False), (0x7F, False),
                                                     (0x80, True), (0x81, True), (0xFF, True)])
def test_product_category_high_bit_is_the_test_card_flag(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                                         category: int, test_card: bool) -> None:
    ext = x509.UnrecognizedExtension(OID_CATEGORY, bytes([0x04, 0x01, category]))
    state = _state(trust, PRODUCTION_SETS, refuse_test_cards=True)
    assert _run(state, _card(cards["fort"], _reissue(cards["fort"].leaf, add=(ext,)))) is not test_card
    if test_card:
        assert state.reason is Reason.TEST_CARD and state.detail == f"product category 0x{category:02x} is a test card"


def test_card_without_product_category_is_not_a_test_card(trust: dict[str, AuthorityTrust],
                                                          cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS, refuse_test_cards=True)
    assert _run(state, _card(cards["fort"], _reissue(cards["fort"].leaf, drop=(OID_CATEGORY,)))) is True


@pytest.mark.parametrize(("code", "accepted"), [(0, True), (3, True), (1, False), (4, False), (None, False)])
def test_card_type_codes(trust: dict[str, AuthorityTrust], cards: dict[str, Card], code: int | None,
                         accepted: bool) -> None:
    add: tuple[x509.ExtensionType, ...] = () if code is None else (
        x509.UnrecognizedExtension(OID_CARD_TYPE, bytes([0x02, 0x01, code])),)
    leaf = _reissue(cards["fort"].leaf, drop=(OID_CARD_TYPE,), add=add)
    state = _state(trust, PRODUCTION_SETS, card_types=frozenset({CardType.CPS, CardType.CPA}))
    assert _run(state, _card(cards["fort"], leaf)) is accepted
    if not accepted:
        assert state.reason is Reason.CARD_TYPE
        assert state.detail == f"card type {'CPF' if code == 1 else code} not accepted by this flow"


# -- the CRL check inside authorize() -------------------------------------------------------------------
_CRL_NOW = datetime.now(UTC).replace(microsecond=0)
_DAY = 86400.0


_LOADED: dict[tuple[str, str, tuple[int, ...]], tuple[bytes, IssuerState]] = {}


def _loaded(pki: TestPki, kind: str, revoked: list[x509.Certificate]) -> tuple[bytes, IssuerState]:
    """A CRL of the Fort set's intermediate or root listing ``revoked``, validated and indexed (made once)."""
    key = (str(pki.root), kind, tuple(c.serial_number for c in revoked))
    if key not in _LOADED:
        _LOADED[key] = _make_loaded(pki, kind, revoked)
    return _LOADED[key]


def _make_loaded(pki: TestPki, kind: str, revoked: list[x509.Certificate]) -> tuple[bytes, IssuerState]:
    files = pki.authorities["igc-sante-fort-pp"]
    cert_path, key_path = ((files.intermediates[0], files.intermediate_keys[0]) if kind == "inter"
                           else (files.roots[0], files.root_keys[0]))
    ca = load_cert(cert_path)
    this = _CRL_NOW - timedelta(days=1)
    der = make_crl(ca, load_key(key_path), revoked=[(c.serial_number, this, x509.ReasonFlags.key_compromise)
                                                     for c in revoked],
                   this_update=this, next_update=this + timedelta(days=7))
    p = prepare(der, (ca.public_bytes(serialization.Encoding.DER),), _CRL_NOW.timestamp())
    return ca_key(ca), IssuerState(LoadedCrl(p.meta, p.index, "file"))


def _crl_state(pki: TestPki, revoked: list[x509.Certificate], *, required: bool = True,
               grace: float | None = None, holder: bool = True) -> VerifyState:
    view = RevocationView()
    for kind, listed in (("inter", revoked), ("root", [])):
        key, issuer_state = _loaded(pki, kind, listed)
        view = view.with_issuer(key, issuer_state)
    files = pki.authorities["igc-sante-fort-pp"]
    fort = compile_authority("igc-sante-fort-pp", False, [c for p in files.roots for c in _certs(p)],
                             [c for p in files.intermediates for c in _certs(p)],
                             RevocationPolicy(required=required, grace=grace))
    rules = FlowRules(flow="2bis", profile=Profile.PRODUCTION, authorities=(fort,), card_types=frozenset(),
                      refuse_test_cards=True, require_cert=True,
                      revocation=RevocationHolder(view) if holder else None)
    return VerifyState(rules)


def _run_at(state: VerifyState, card: Card, root: x509.Certificate, now: float | None) -> bool:
    assert card.issuer is not None
    state.chain.update({2: root, 1: card.issuer, 0: card.leaf})
    return authorize(state, card.leaf, now)


def test_revoked_card_is_refused_by_authorize(pki: TestPki, cards: dict[str, Card],
                                              roots: dict[str, x509.Certificate]) -> None:
    state = _crl_state(pki, [cards["revoked"].leaf])
    assert _run_at(state, cards["revoked"], roots["igc-sante-fort-pp"], None) is False
    assert state.reason is Reason.REVOKED and state.revoked is not None
    assert state.revoked.reason_name == "keyCompromise"
    assert f"serial {cards['revoked'].leaf.serial_number:x} revoked" in state.detail
    # the same CRLs accept a card they do not list
    good = _crl_state(pki, [cards["revoked"].leaf])
    assert _run_at(good, cards["fort"], roots["igc-sante-fort-pp"], None) is True
    assert good.reason is None and good.revoked is None and good.crl_grace == []


def test_revoked_intermediate_is_refused_by_authorize(pki: TestPki, cards: dict[str, Card],
                                                      roots: dict[str, x509.Certificate]) -> None:
    fort = cards["fort"]
    assert fort.issuer is not None
    state = _crl_state(pki, [])
    assert state.rules.revocation is not None
    key, issuer_state = _loaded(pki, "root", [fort.issuer])
    view = state.rules.revocation.current.with_issuer(key, issuer_state)
    state.rules.revocation.swap(view)
    assert _run_at(state, fort, roots["igc-sante-fort-pp"], None) is False
    assert state.reason is Reason.REVOKED and "(depth 1)" in state.detail


def test_authorize_uses_the_clock_it_is_given(pki: TestPki, cards: dict[str, Card],
                                             roots: dict[str, x509.Certificate]) -> None:
    root = roots["igc-sante-fort-pp"]
    later = _CRL_NOW.timestamp() + 30 * _DAY                   # the CRLs' nextUpdate long past
    stale = _crl_state(pki, [])
    assert _run_at(stale, cards["fort"], root, later) is False and stale.reason is Reason.CRL_STALE
    graced = _crl_state(pki, [], grace=60 * _DAY)
    assert _run_at(graced, cards["fort"], root, later) is True
    assert len(graced.crl_grace) == 2 and graced.reason is None
    assert _run_at(_crl_state(pki, []), cards["fort"], root, _CRL_NOW.timestamp()) is True


def test_no_crl_in_force_is_refused(pki: TestPki, cards: dict[str, Card], roots: dict[str, x509.Certificate]) -> None:
    state = _crl_state(pki, [])
    assert state.rules.revocation is not None
    state.rules.revocation.swap(RevocationView())
    assert _run_at(state, cards["fort"], roots["igc-sante-fort-pp"], None) is False
    assert state.reason is Reason.CRL_MISSING


def test_revocation_not_required_or_no_holder_is_not_checked(pki: TestPki, cards: dict[str, Card],
                                                             roots: dict[str, x509.Certificate]) -> None:
    root = roots["igc-sante-fort-pp"]
    for state in (_crl_state(pki, [cards["revoked"].leaf], required=False),
                  _crl_state(pki, [cards["revoked"].leaf], holder=False)):
        assert _run_at(state, cards["revoked"], root, None) is True and state.revoked is None


# -- more of what mutation testing reported on verify.py ---------------------------------------------------
@pytest.mark.parametrize(("errno", "reason"), [(18, Reason.SELF_SIGNED), (28, Reason.WRONG_USAGE),
                                               (8, Reason.BAD_CERTIFICATE), (11, Reason.BAD_CERTIFICATE),
                                               (23, Reason.BAD_CERTIFICATE), (69, Reason.BAD_CERTIFICATE)])
def test_every_mapped_openssl_error(trust: dict[str, AuthorityTrust], cards: dict[str, Card],
                                    errno: int, reason: Reason) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _callback(state, cards["expired"].leaf, errno, 0, 0) is False
    assert state.reason is reason and f"(X509_V_ERR {errno}) at depth 0" in state.detail


@pytest.mark.parametrize("errno", [2, 3, 19, 20, 21, 24, 25])
def test_every_unknown_issuer_code_tells_test_from_production(trust: dict[str, AuthorityTrust],
                                                              cards: dict[str, Card], errno: int) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _callback(state, cards["test-fort"].leaf, errno, 0, 0) is False
    assert state.reason is Reason.TEST_CHAIN
    state = _state(trust, PRODUCTION_SETS)
    assert _callback(state, cards["unknown-ca"].leaf, errno, 0, 0) is False
    assert state.reason is Reason.UNKNOWN_CA


def test_callback_refuses_when_authorize_raises(cards: dict[str, Card]) -> None:
    rules = FlowRules(flow="2bis", profile=Profile.PRODUCTION, authorities=None,  # type: ignore[arg-type]
                      card_types=frozenset(), refuse_test_cards=True, require_cert=True)
    state = VerifyState(rules)
    state.chain[1] = cards["fort"].issuer  # type: ignore[assignment]
    assert _callback(state, cards["fort"].leaf, 0, 0, 1) is False
    assert state.reason is Reason.BAD_CERTIFICATE and state.detail == "TypeError at depth 0"


def test_weak_crypto_judges_a_lone_card_that_is_not_self_issued(pki: TestPki) -> None:
    # the top certificate is skipped only when it is self-issued (a trust anchor), not because it is on top
    sha1_card = _certs(pki.cards["sha1"].cert)[0]
    assert weak_crypto({0: sha1_card}) == (Reason.WEAK_SIGNATURE, "SHA1 signature at depth 0")


def test_authorize_with_no_chain_judges_the_leaf(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert authorize(state, cards["sha1"].leaf) is False
    assert state.reason is Reason.WEAK_SIGNATURE


def test_weak_dsa_key_is_named() -> None:
    from cryptography.hazmat.primitives.asymmetric import dsa

    key = dsa.generate_private_key(1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dsa")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert weak_crypto({0: cert}) == (Reason.WEAK_KEY, "1024-bit DSA key at depth 0")


def test_rsa_and_ec_key_size_limits_are_inclusive() -> None:
    rsa2048, p256 = rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())
    root = _self_signed(rsa2048, hashes.SHA256(), cn="root")
    assert weak_crypto({0: _self_signed(p256, hashes.SHA256(), (root.subject, rsa2048)), 1: root}) is None
    rsa2047 = rsa.generate_private_key(65537, 2047)
    assert weak_crypto({0: _self_signed(rsa2047, hashes.SHA256(), (root.subject, rsa2048)), 1: root}) == \
        (Reason.WEAK_KEY, "2047-bit RSA key at depth 0")


def test_compiled_authority_defaults_to_no_revocation(roots: dict[str, x509.Certificate]) -> None:
    from sniproxy.crl.state import RevocationPolicy

    root = roots["igc-sante-fort-pp"]
    a = compile_authority("a", False, [root], [])
    assert a.revocation == RevocationPolicy() and a.revocation.required is False
    assert a.roots == (root,) and a.intermediates == () and a.test is False and a.name == "a"
    with pytest.raises(AttributeError):
        a.name = "b"  # type: ignore[misc]


def test_authority_without_revocation_policy_is_not_checked_even_with_a_holder(
        pki: TestPki, cards: dict[str, Card], roots: dict[str, x509.Certificate]) -> None:
    files = pki.authorities["igc-sante-fort-pp"]
    state = _crl_state(pki, [cards["revoked"].leaf])
    fort = compile_authority("igc-sante-fort-pp", False, [c for p in files.roots for c in _certs(p)],
                             [c for p in files.intermediates for c in _certs(p)])
    rules = FlowRules(flow="2bis", profile=Profile.PRODUCTION, authorities=(fort,), card_types=frozenset(),
                      refuse_test_cards=True, require_cert=True, revocation=state.rules.revocation)
    unchecked = VerifyState(rules)
    assert _run_at(unchecked, cards["revoked"], roots["igc-sante-fort-pp"], None) is True


def test_flow_rules_are_frozen(trust: dict[str, AuthorityTrust]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    with pytest.raises(AttributeError):
        state.rules.flow = "other"  # type: ignore[misc]


def test_verify_state_starts_empty(trust: dict[str, AuthorityTrust]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert state.called is False and state.reason is None and state.chain == {} and state.crl_grace == []
    assert state.authority is None and state.revoked is None and state.detail == ""


def test_openssl_error_text_when_the_binding_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from sniproxy.tls.verify import _x509_error

    assert _x509_error(10, 2) == "certificate has expired (X509_V_ERR 10) at depth 2"
    monkeypatch.setitem(sys.modules, "OpenSSL._util", None)      # the private module gone: still a text
    assert _x509_error(10, 2) == "verify error (X509_V_ERR 10) at depth 2"


def test_authorize_with_no_chain_names_depth_zero(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert authorize(state, cards["sha1"].leaf) is False
    assert state.detail == "SHA1 signature at depth 0"


def test_a_chain_of_the_card_alone_anchors_nowhere(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    state.chain[0] = cards["fort"].leaf
    assert authorize(state, cards["fort"].leaf) is False
    assert state.reason is Reason.UNKNOWN_CA and state.detail == "chain anchors in no authority set of this flow"


def test_the_card_itself_never_names_the_authority_set(cards: dict[str, Card]) -> None:
    """Even a set that (wrongly) lists the card among its CAs: only a CA above the card names the set."""
    leaf = cards["fort"].leaf
    odd = compile_authority("odd", False, [], [leaf])
    rules = FlowRules(flow="2bis", profile=Profile.PRODUCTION, authorities=(odd,), card_types=frozenset(),
                      refuse_test_cards=True, require_cert=True)
    state = VerifyState(rules)
    state.chain[0] = leaf
    assert authorize(state, leaf) is False and state.reason is Reason.UNKNOWN_CA


def test_wrong_usage_details(trust: dict[str, AuthorityTrust], cards: dict[str, Card]) -> None:
    state = _state(trust, PRODUCTION_SETS)
    assert _run(state, cards["wrong-eku"]) is False
    assert state.detail == "extended key usage lacks clientAuth"
