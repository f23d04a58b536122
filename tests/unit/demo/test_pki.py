"""sniproxy.demo.pki: every generated certificate has the intended shape, good chains verify, bad cards fail
the intended way (checked with the real ``openssl verify``)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sniproxy.card.identity import parse_identity
from sniproxy.card.names import is_test_issuer
from sniproxy.demo.pki import CARDS, LAYOUT_VERSION, TestPki, build

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed")
MS_SMARTCARD_LOGIN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    # (no time limit asserted here: speed lives in benchmarks; under a loaded machine this failed)
    return build(tmp_path_factory.mktemp("pki"))


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def chain_of(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def verify(root: Path, intermediate: Path | None, leaf: Path, purpose: str = "sslclient") -> tuple[bool, str]:
    assert OPENSSL is not None
    cmd = [OPENSSL, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(root)]
    if intermediate is not None:
        cmd += ["-untrusted", str(intermediate)]
    res = subprocess.run([*cmd, str(leaf)], capture_output=True, text=True, timeout=10, check=False)
    return res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- identities of the cards
# card -> (authority set, expected identity fields)
GOOD_CARDS: dict[str, tuple[str, dict[str, object]]] = {
    "cps-2ter": ("igc-cps-2ter", dict(
        layout="igc-cps", idnat_ps="810001234567", idnat_struct="10B0012345", profession="Médecin",
        given_name="JEAN", surname="DUPONT", organization=None, department="Paris (75)",
        card_type=0, card_type_name="CPS", category=0, is_test_card=False, profession_code=10,
        upn="810001234567@carte-cps.fr")),
    "fort": ("igc-sante-fort-pp", dict(
        layout="igc-sante", idnat_ps="810009876543", idnat_struct="10B0076543", profession="Médecin",
        given_name="MARIE", surname="MARTIN", organization="CENTRE HOSPITALIER EXEMPLE",
        department="Paris (75)",
        card_type=0, card_type_name="CPS", category=0, is_test_card=False, profession_code=10,
        upn="810009876543@carte-cps.fr")),
    "fort-liberal": ("igc-sante-fort-pp", dict(
        layout="igc-sante", idnat_ps="810005556667", idnat_struct=None, profession="Médecin",
        organization=None, department=None, card_type_name="CPS", is_test_card=False)),
    "standard-cpe": ("igc-sante-standard-pp", dict(
        layout="igc-sante", idnat_ps="30B0057881/CPET0099", idnat_struct="10B0057881",
        profession="Personnel santé ou social", card_type=2, card_type_name="CPE", category=0,
        profession_code=None, upn="30B0057881/CPET0099@carte-cps.fr")),
    "test-fort": ("igc-sante-fort-pp-test", dict(
        layout="igc-sante", idnat_ps="810001000001", card_type_name="CPS", category=0x80, is_test_card=True)),
    "test-category": ("igc-sante-fort-pp", dict(
        layout="igc-sante", idnat_ps="810001000002", category=0x80, is_test_card=True)),
    "cpf": ("igc-sante-fort-pp", dict(layout="igc-sante", idnat_ps="810001000003", card_type=1,
                                     card_type_name="CPF", is_test_card=False, profession_code=10)),
}


def test_every_card_is_described() -> None:
    # "revoked" is well formed: only the CRLs of sniproxy.demo.crls.write_crls make it bad.
    bad = {"expired", "not-yet-valid", "wrong-eku", "wrong-ku", "unknown-ca", "self-signed", "revoked",
           "sha1", "rsa1024", "deep", "bad-signature"}
    assert {c.name for c in CARDS} == set(GOOD_CARDS) | bad


@pytest.mark.parametrize("card", sorted(GOOD_CARDS))
def test_card_identity(pki: TestPki, card: str) -> None:
    authority, expected = GOOD_CARDS[card]
    cert = cert_of(pki.cards[card].cert)
    ident = parse_identity(cert, authority)
    for key, value in expected.items():
        assert getattr(ident, key) == value, key
    assert ident.card_serial is not None and ident.card_serial.startswith("8025000001/")
    assert cert.issuer == cert_of(pki.authorities[authority].intermediates[0]).subject


def test_igc_sante_card_puts_gn_cn_sn_in_one_rdn(pki: TestPki) -> None:
    last = cert_of(pki.cards["fort"].cert).subject.rdns[-1]
    assert {a.oid for a in last} == {NameOID.GIVEN_NAME, NameOID.COMMON_NAME, NameOID.SURNAME}
    cps = cert_of(pki.cards["cps-2ter"].cert).subject
    assert [a.value for a in cps.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)] == \
        ["10B0012345", "Médecin"]
    liberal = cert_of(pki.cards["fort-liberal"].cert).subject
    for oid in (NameOID.STATE_OR_PROVINCE_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
        assert not liberal.get_attributes_for_oid(oid)


@pytest.mark.parametrize("card", [c.name for c in CARDS])
def test_card_keys_and_usages(pki: TestPki, card: str) -> None:
    kp = pki.cards[card]
    cert = cert_of(kp.cert)
    key = serialization.load_pem_private_key(kp.key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == (1024 if card == "rsa1024" else 2048)
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert stat.S_IMODE(kp.key.stat().st_mode) == 0o600
    chain = chain_of(kp.chain)
    assert chain[0] == cert
    assert len(chain) == {"self-signed": 1, "deep": 6}.get(card, 2)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == ("sha1" if card == "sha1" else "sha256")
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ku.critical
    if card == "wrong-ku":
        assert ku.value.content_commitment and not ku.value.digital_signature
        assert eku == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    elif card == "wrong-eku":
        assert ku.value.digital_signature and eku == [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        assert ku.value.digital_signature and not ku.value.content_commitment
        assert eku == [ExtendedKeyUsageOID.CLIENT_AUTH, MS_SMARTCARD_LOGIN]
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert not cdp.critical
    full_name = cdp.value[0].full_name
    assert full_name is not None
    uri = full_name[0].value
    assert uri.startswith("http://crl.invalid/") and uri.endswith(".crl")


# --------------------------------------------------------------------------- chains, with openssl
@needs_openssl
@pytest.mark.parametrize("card", sorted(GOOD_CARDS))
def test_good_card_chain_verifies(pki: TestPki, card: str) -> None:
    auth = pki.authorities[GOOD_CARDS[card][0]]
    ok, out = verify(auth.roots[0], auth.intermediates[0], pki.cards[card].cert)
    assert ok, out
    # and the chain file alone (leaf + intermediate) is what a client sends
    ok, out = verify(auth.roots[0], pki.cards[card].chain, pki.cards[card].cert)
    assert ok, out


@needs_openssl
@pytest.mark.parametrize(("card", "error"), [
    ("expired", "error 10 "), ("not-yet-valid", "error 9 "),
    ("wrong-eku", "error 26 "), ("wrong-ku", "error 26 "),
])
def test_bad_card_fails_the_intended_way(pki: TestPki, card: str, error: str) -> None:
    auth = pki.authorities["igc-sante-fort-pp"]
    ok, out = verify(auth.roots[0], auth.intermediates[0], pki.cards[card].cert)
    assert not ok and error in out, out
    if card.startswith("wrong"):
        # the chain itself is fine: only the purpose is wrong
        ok, out = verify(auth.roots[0], auth.intermediates[0], pki.cards[card].cert, purpose="any")
        assert ok, out


@needs_openssl
@pytest.mark.parametrize(("card", "args", "error"), [
    ("sha1", ["-auth_level", "2"], "error 68 at 0 "),          # CA_MD_TOO_WEAK, on the card's own signature
    ("rsa1024", ["-auth_level", "2"], "error 66 at 0 "),       # EE_KEY_TOO_SMALL
    ("deep", ["-verify_depth", "4"], "error 22 at 5 "),        # CERT_CHAIN_TOO_LONG past the default depth
    ("bad-signature", [], "error 7 at 0 "),                    # CERT_SIGNATURE_FAILURE
])
def test_weak_deep_and_forged_cards_fail_only_the_intended_way(pki: TestPki, card: str, args: list[str],
                                                                error: str) -> None:
    """Each of these cards is refused for one reason: without the constraint that catches it, it verifies."""
    assert OPENSSL is not None
    auth, kp = pki.authorities["igc-sante-fort-pp"], pki.cards[card]

    def run(extra: list[str]) -> tuple[bool, str]:
        cmd = [OPENSSL, "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(auth.roots[0]),
               "-untrusted", str(kp.chain), *extra, str(kp.cert)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return res.returncode == 0, res.stdout + res.stderr

    ok, out = run(args)
    assert not ok and error in out, out
    if card != "bad-signature":
        relaxed = {"sha1": ["-auth_level", "0"], "rsa1024": ["-auth_level", "0"], "deep": ["-verify_depth", "5"]}
        ok, out = run(relaxed[card])
        assert ok, out


@needs_openssl
def test_unknown_ca_card(pki: TestPki) -> None:
    card = pki.cards["unknown-ca"]
    for name, auth in pki.authorities.items():
        ok, out = verify(auth.roots[0], auth.intermediates[0], card.cert)
        assert not ok and "error 20 " in out, (name, out)
    ok, out = verify(pki.unknown_ca_root, card.chain, card.cert)
    assert ok, out
    assert not is_test_issuer(cert_of(card.cert).issuer)   # refused as unknown_ca, not test_chain


@needs_openssl
def test_self_signed_card(pki: TestPki) -> None:
    card = pki.cards["self-signed"]
    cert = cert_of(card.cert)
    assert cert.issuer == cert.subject
    auth = pki.authorities["igc-sante-fort-pp"]
    ok, out = verify(auth.roots[0], auth.intermediates[0], card.cert)
    assert not ok and "error 18 " in out, out


@needs_openssl
def test_test_chain_is_not_production(pki: TestPki) -> None:
    prod, test = pki.authorities["igc-sante-fort-pp"], pki.authorities["igc-sante-fort-pp-test"]
    ok, _ = verify(prod.roots[0], prod.intermediates[0], pki.cards["test-fort"].cert)
    assert not ok
    ok, _ = verify(test.roots[0], test.intermediates[0], pki.cards["fort"].cert)
    assert not ok
    assert is_test_issuer(cert_of(pki.cards["test-fort"].cert).issuer)
    assert not is_test_issuer(cert_of(pki.cards["test-category"].cert).issuer)


# --------------------------------------------------------------------------- authorities
EXPECTED_SETS = {
    "igc-cps-2ter": ("OU=AC-RACINE-CPS2TER,O=GIP-CPS,C=FR", "OU=AC-CLASSE-1,O=GIP-CPS,C=FR"),
    "igc-cps-2ter-test": ("OU=AC-RACINE-CPS2TER-TEST,O=GIP-CPS-TEST,C=FR",
                          "OU=AC-CLASSE-1-TEST,O=GIP-CPS-TEST,C=FR"),
    "igc-cps-2bis": ("OU=AC-RACINE-CPS2BIS,O=GIP-CPS,C=FR", "OU=AC-CLASSE-4,O=GIP-CPS,C=FR"),
    "igc-sante-fort-pp": ("CN=AC RACINE IGC-SANTE FORT,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR",
                          "CN=AC IGC-SANTE FORT PERSONNES,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"),
    "igc-sante-fort-pp-test": (
        "CN=TEST AC RACINE IGC-SANTE FORT,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR",
        "CN=TEST AC IGC-SANTE FORT PERSONNES,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR"),
    "igc-sante-standard-pp": (
        "CN=AC RACINE IGC-SANTE STANDARD,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR",
        "CN=AC IGC-SANTE STANDARD PERSONNES,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"),
    "igc-sante-standard-pp-test": (
        "CN=TEST AC RACINE IGC-SANTE STANDARD,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR",
        "CN=TEST AC IGC-SANTE STANDARD PERSONNES,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR"),
    "igc-sante-elementaire-org": (
        "CN=AC RACINE IGC-SANTE ELEMENTAIRE,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR",
        "CN=AC IGC-SANTE ELEMENTAIRE ORGANISATIONS,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SETS))
def test_authority_set(pki: TestPki, name: str) -> None:
    files = pki.authorities[name]
    root, inter = cert_of(files.roots[0]), cert_of(files.intermediates[0])
    assert (root.subject.rfc4514_string(), inter.subject.rfc4514_string()) == EXPECTED_SETS[name]
    assert root.issuer == root.subject and inter.issuer == root.subject
    assert is_test_issuer(inter.subject) is name.endswith("-test")
    assert is_test_issuer(root.subject) is name.endswith("-test")
    bc = inter.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    for key_path in (*files.root_keys, *files.intermediate_keys):
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_no_unexpected_sets(pki: TestPki) -> None:
    assert set(pki.authorities) == set(EXPECTED_SETS)


# --------------------------------------------------------------------------- servers
SERVERS = {
    "2bis": ("igc-cps-2bis", "CN=frontimap.mssante.fr,OU=318751275100020,L=Paris (75),O=GIP-CPS,C=FR",
             "", "1.2.250.1.71.3.7.4", "igc-cps"),
    "igcsante": ("igc-sante-elementaire-org",
                 "CN=frontimap-igcsante.mssante.fr,OU=318751275100020,O=AGENCE DU NUMERIQUE EN SANTE,"
                 "ST=Paris (75),C=FR", "-igcsante", "1.2.250.1.213.1.7.1.1.2.5.1", "igc-sante"),
}


@pytest.mark.parametrize("flow", sorted(SERVERS))
def test_server(pki: TestPki, flow: str) -> None:
    set_name, subject, sfx, policy, layout = SERVERS[flow]
    kp = pki.servers[flow]
    cert = cert_of(kp.cert)
    assert cert.subject.rfc4514_string() == subject
    assert parse_identity(cert).layout == layout
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        f"frontimap{sfx}.mssante.fr", f"frontsmtp{sfx}.mssante.fr", f"mss-msg{sfx}.mssante.fr",
        f"mss-idp{sfx}.mssante.fr", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.content_commitment
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == [policy]
    chain = chain_of(kp.chain)
    assert chain == [cert, cert_of(pki.authorities[set_name].intermediates[0])]
    assert stat.S_IMODE(kp.key.stat().st_mode) == 0o600
    if OPENSSL is not None:
        auth = pki.authorities[set_name]
        ok, out = verify(auth.roots[0], kp.chain, kp.cert, purpose="sslserver")
        assert ok, out


# --------------------------------------------------------------------------- idempotence and time
def test_build_is_idempotent_and_time_anchored(tmp_path: Path) -> None:
    t0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    first = build(tmp_path, now=t0)
    fort = first.cards["fort"].cert.read_bytes()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["version"] == LAYOUT_VERSION
    # validity periods follow ``now``, not the wall clock
    assert cert_of(first.cards["expired"].cert).not_valid_after_utc == t0 - timedelta(days=1)
    assert cert_of(first.cards["not-yet-valid"].cert).not_valid_before_utc == t0 + timedelta(days=1)
    fort_cert = cert_of(first.cards["fort"].cert)
    assert fort_cert.not_valid_before_utc < t0 < fort_cert.not_valid_after_utc

    again = build(tmp_path, now=t0 + timedelta(hours=1))
    assert again == first
    assert again.cards["fort"].cert.read_bytes() == fort   # loaded, not regenerated

    # a day later the not-yet-valid card would be valid: the PKI is regenerated
    later = build(tmp_path, now=t0 + timedelta(days=2))
    assert later.cards["fort"].cert.read_bytes() != fort
    assert cert_of(later.cards["not-yet-valid"].cert).not_valid_before_utc == t0 + timedelta(days=3)


def test_other_layout_version_is_regenerated(tmp_path: Path) -> None:
    t0 = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)
    build(tmp_path, now=t0)
    fort = (tmp_path / "cards" / "fort" / "cert.pem").read_bytes()
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = LAYOUT_VERSION + 100
    manifest_path.write_text(json.dumps(manifest))
    build(tmp_path, now=t0)
    assert (tmp_path / "cards" / "fort" / "cert.pem").read_bytes() != fort
    assert json.loads(manifest_path.read_text())["version"] == LAYOUT_VERSION


@needs_openssl
def test_verify_depth_counts_intermediates_as_docs_config_says(pki: TestPki) -> None:
    """docs/config.md: ``verify_depth: N`` accepts card + N intermediates + root, refuses N + 1 intermediates.

    The ``deep`` card has 5 sub-CAs under the Fort root: depth 5 accepts it, depth 4 refuses it at depth 5
    (its fifth intermediate); the ordinary card (one intermediate) passes depth 1 and depth 0 refuses it at its
    intermediate (depth 1): the root is never counted.
    """
    assert OPENSSL is not None
    auth = pki.authorities["igc-sante-fort-pp"]

    def run(card: str, depth: int) -> tuple[bool, str]:
        kp = pki.cards[card]
        cmd = [OPENSSL, "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(auth.roots[0]),
               "-untrusted", str(kp.chain), "-verify_depth", str(depth), str(kp.cert)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        return res.returncode == 0, res.stdout + res.stderr

    assert run("deep", 5)[0]
    ok, out = run("deep", 4)
    assert not ok and "error 22 at 5 " in out, out
    assert run("fort", 1)[0]
    ok, out = run("fort", 0)
    assert not ok and "error 22 at 1 " in out, out
