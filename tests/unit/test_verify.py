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
from sniproxy.errors import Reason
from sniproxy.testpki import TestPki, build, resign_sha1
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
