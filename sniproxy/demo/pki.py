"""The project's test PKI, generated in code at run time (nothing here is ever committed).

Look-alikes of the IGC CPS and IGC Santé authorities, the operator's two server certificates and a
set of cards, good and bad, following the DN layouts of docs/domain.md (notice §3.2) and the real
samples in ``tests/data/samples``. Used by the tests, ``sniproxy demo`` and the benchmarks.

Why look-alikes: the production Fort/Standard chains and every GIP-CPS CA are not public, and
no private key of a real CA is, so a real handshake needs generated material with the same shape.

Choices for names that no public source shows (IGC CPS CAs have no CN, only OUs):
``igc-cps-2ter`` root ``C=FR,O=GIP-CPS,OU=AC-RACINE-CPS2TER`` and intermediate ``OU=AC-CLASSE-1``;
``igc-cps-2bis`` root ``OU=AC-RACINE-CPS2BIS`` and intermediate ``OU=AC-CLASSE-4``; the TEST variants
use ``O=GIP-CPS-TEST`` and a ``-TEST`` suffix, as the real ``OU=AC-CLASSE-4-TEST`` does. Production
card policies are not public, so production cards carry none; TEST cards carry the shared TEST policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Bump when file names, names or extensions change: an older PKI on disk is then regenerated.
LAYOUT_VERSION = 3

OID_CARD_TYPE = x509.ObjectIdentifier("1.2.250.1.71.1.2.2")
OID_CARD_SERIAL = x509.ObjectIdentifier("1.2.250.1.71.1.2.3")
OID_CATEGORY = x509.ObjectIdentifier("1.2.250.1.71.1.2.5")
OID_PROFESSION = x509.ObjectIdentifier("1.2.250.1.71.1.2.7")
OID_UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
OID_MS_SMARTCARD_LOGIN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")
POLICY_EL_ORG = "1.2.250.1.213.1.7.1.1.2.5.1"      # production Élémentaire Organisations server
POLICY_TEST_EE = "1.2.250.1.213.1.7.2.1.1.1.1"     # every IGC Santé TEST end-entity
POLICY_CPS_CLASSE4 = "1.2.250.1.71.3.7.4"          # IGC CPS classe 4 server

MSSANTE_NAMES = ("frontimap", "frontsmtp", "mss-msg", "mss-idp")
IDNAT_STRUCT_OPERATOR = "318751275100020"            # the operator's structure id, as in the real samples


@dataclass(frozen=True, slots=True)
class AuthorityFiles:
    """PEM files of one authority set; keys (mode 0600) are there for tests that sign CRLs."""

    roots: tuple[Path, ...]
    intermediates: tuple[Path, ...]
    root_keys: tuple[Path, ...] = ()
    intermediate_keys: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A leaf certificate, its private key, and ``chain`` = leaf then intermediate (what a peer sends)."""

    cert: Path
    key: Path
    chain: Path


@dataclass(frozen=True, slots=True)
class TestPki:
    """Everything ``build`` wrote, by name."""

    __test__: ClassVar[bool] = False   # not a pytest test class despite the name

    root: Path
    authorities: dict[str, AuthorityFiles]
    servers: dict[str, KeyPair]
    cards: dict[str, KeyPair]
    unknown_ca_root: Path


# --------------------------------------------------------------------------- names
def _sante_ca(cn: str, test: bool) -> x509.Name:
    """IGC Santé CA name: C, O=ASIP-SANTE, OU=0002 187512751, OU=IGC-SANTE[ TEST], CN=[TEST ]AC ..."""
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ASIP-SANTE"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 187512751"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST" if test else "IGC-SANTE"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"TEST {cn}" if test else cn),
    ])


def _cps_ca(ou: str, test: bool) -> x509.Name:
    """IGC CPS CA name: no CN, C=FR, O=GIP-CPS[-TEST], OU=<ca>[-TEST]."""
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GIP-CPS-TEST" if test else "GIP-CPS"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{ou}-TEST" if test else ou),
    ])


def _sante_card(cn: str, gn: str, sn: str, title: str, *, st: str | None = None, o: str | None = None,
                ou: str | None = None) -> x509.Name:
    """IGC Santé card subject: C, [ST], [O], [OU], title, then GN + CN + SN in ONE multi-valued RDN."""
    rdns = [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")])]
    for oid, value in ((NameOID.STATE_OR_PROVINCE_NAME, st), (NameOID.ORGANIZATION_NAME, o),
                       (NameOID.ORGANIZATIONAL_UNIT_NAME, ou), (NameOID.TITLE, title)):
        if value is not None:
            rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(oid, value)]))
    rdns.append(x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.GIVEN_NAME, gn),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.SURNAME, sn),
    ]))
    return x509.Name(rdns)


def _cps_card(cn: str, gn: str, sn: str, profession: str, *, locality: str, struct: str) -> x509.Name:
    """IGC CPS card subject: C, O=GIP-CPS, L, OU=<IdNat_Struct>, OU=<profession>, CN, SN, GN."""
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GIP-CPS"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, locality),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, struct),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, profession),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.SURNAME, sn),
        x509.NameAttribute(NameOID.GIVEN_NAME, gn),
    ])


@dataclass(frozen=True, slots=True)
class _CaSpec:
    name: str
    root: x509.Name
    intermediate: x509.Name
    test: bool


def _ca_specs() -> tuple[_CaSpec, ...]:
    specs: list[_CaSpec] = []
    for test in (False, True):
        sfx = "-test" if test else ""
        specs += [
            _CaSpec(f"igc-cps-2ter{sfx}", _cps_ca("AC-RACINE-CPS2TER", test),
                    _cps_ca("AC-CLASSE-1", test), test),
            _CaSpec(f"igc-sante-fort-pp{sfx}", _sante_ca("AC RACINE IGC-SANTE FORT", test),
                    _sante_ca("AC IGC-SANTE FORT PERSONNES", test), test),
            _CaSpec(f"igc-sante-standard-pp{sfx}", _sante_ca("AC RACINE IGC-SANTE STANDARD", test),
                    _sante_ca("AC IGC-SANTE STANDARD PERSONNES", test), test),
        ]
    specs += [
        _CaSpec("igc-cps-2bis", _cps_ca("AC-RACINE-CPS2BIS", False), _cps_ca("AC-CLASSE-4", False), False),
        _CaSpec("igc-sante-elementaire-org", _sante_ca("AC RACINE IGC-SANTE ELEMENTAIRE", False),
                _sante_ca("AC IGC-SANTE ELEMENTAIRE ORGANISATIONS", False), False),
    ]
    return tuple(specs)


def _unknown_name(cn: str) -> x509.Name:
    # Deliberately free of the word TEST: a refusal of this chain must read unknown_ca, not test_chain.
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ROGUE PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True, slots=True)
class _CardSpec:
    name: str
    authority: str | None           # None: the unknown CA (or self-signed when self_signed)
    subject: x509.Name
    card_type: int | None = 0
    category: int = 0x00
    profession: int | None = 10
    usage: str = "auth"             # auth | sign | server-eku
    validity: str = "good"          # good | expired | future
    self_signed: bool = False
    digest: str = "sha256"          # sha256 | sha1: the hash the issuer signs the card with
    key_bits: int = 2048            # RSA modulus of the card's own key
    sub_cas: int = 0                # extra CAs between the set's ROOT and the card (a chain that is too deep)
    forged: bool = False            # signed by a stranger's key under the issuer's name (signature fails)


_PARIS = "Paris (75)"
_HOSPITAL = "CENTRE HOSPITALIER EXEMPLE"


def _fort(cn: str, gn: str = "MARIE", sn: str = "MARTIN") -> x509.Name:
    return _sante_card(cn, gn, sn, "Médecin", st=_PARIS, o=_HOSPITAL, ou="10B0076543")


CARDS: tuple[_CardSpec, ...] = (
    _CardSpec("cps-2ter", "igc-cps-2ter",
              _cps_card("810001234567", "JEAN", "DUPONT", "Médecin", locality=_PARIS, struct="10B0012345")),
    _CardSpec("fort", "igc-sante-fort-pp", _fort("810009876543")),
    _CardSpec("fort-liberal", "igc-sante-fort-pp", _sante_card("810005556667", "PAUL", "DURAND", "Médecin")),
    _CardSpec("standard-cpe", "igc-sante-standard-pp",
              _sante_card("30B0057881/CPET0099", "CLAIRE", "ADMINISTRATIF-EXEMPLE",
                          "Personnel santé ou social", st=_PARIS, o="HOPITAL EXEMPLE", ou="10B0057881"),
              card_type=2, profession=None),
    _CardSpec("test-fort", "igc-sante-fort-pp-test", _fort("810001000001", "LUCIE", "BERNARD"),
              category=0x80),
    _CardSpec("test-category", "igc-sante-fort-pp", _fort("810001000002", "HUGO", "PETIT"), category=0x80),
    _CardSpec("cpf", "igc-sante-fort-pp", _fort("810001000003", "EMMA", "ROUX"), card_type=1),
    _CardSpec("expired", "igc-sante-fort-pp", _fort("810002000001"), validity="expired"),
    _CardSpec("not-yet-valid", "igc-sante-fort-pp", _fort("810002000002"), validity="future"),
    _CardSpec("wrong-eku", "igc-sante-fort-pp", _fort("810002000003"), usage="server-eku"),
    _CardSpec("wrong-ku", "igc-sante-fort-pp", _fort("810002000004"), usage="sign"),
    _CardSpec("unknown-ca", None, _fort("810002000005")),
    # A good card that CRLs made by ``sniproxy.demo.crls.write_crls`` list as revoked (keyCompromise).
    _CardSpec("revoked", "igc-sante-fort-pp", _fort("810002000007", "LUC", "MOREAU")),
    _CardSpec("self-signed", None, _fort("810002000006"), self_signed=True),
    # Cryptographically weak cards (ANSSI: no SHA-1 signature, no RSA key under 2048 bits).
    _CardSpec("sha1", "igc-sante-fort-pp", _fort("810002000008"), digest="sha1"),
    _CardSpec("rsa1024", "igc-sante-fort-pp", _fort("810002000009"), key_bits=1024),
    # Root -> 5 sub-CAs -> card: one CA more than the default ``verify_depth: 4`` lets OpenSSL build.
    _CardSpec("deep", "igc-sante-fort-pp", _fort("810002000010"), sub_cas=5),
    # The Fort intermediate's name and key identifier, but another key's signature.
    _CardSpec("bad-signature", "igc-sante-fort-pp", _fort("810002000011"), forged=True),
)
SERVERS = ("2bis", "igcsante")


# --------------------------------------------------------------------------- builders
_CaKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_PubKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(slots=True)
class _Ca:
    name: x509.Name
    key: _CaKey
    cert: x509.Certificate


def _der_utf8(text: str) -> bytes:
    """DER UTF8String (the UPN otherName value); short values only, as any real UPN is."""
    body = text.encode("utf-8")
    if len(body) > 0xFF:
        raise ValueError("UPN too long")
    length = bytes([len(body)]) if len(body) < 0x80 else bytes([0x81, len(body)])
    return b"\x0c" + length + body


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return b"\x02" + bytes([len(body)]) + body


def _der_printable(text: str) -> bytes:
    body = text.encode("ascii")
    return b"\x13" + bytes([len(body)]) + body


def _builder(subject: x509.Name, issuer: x509.Name, pub: _PubKey, issuer_pub: _PubKey,
             not_before: datetime, not_after: datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False))


def _ca_cert(subject: x509.Name, key: _CaKey, issuer: _Ca | None,
             now: datetime, *, path_length: int | None = 0) -> x509.Certificate:
    """A root (``issuer`` None) or an intermediate (``path_length``, 0 by default: it issues cards only),
    valid long before and after ``now``."""
    signer_name = issuer.name if issuer else subject
    signer_key = issuer.key if issuer else key
    b = _builder(subject, signer_name, key.public_key(), signer_key.public_key(),
                 now - timedelta(days=3650), now + timedelta(days=7300 if issuer is None else 5475))
    constraints = x509.BasicConstraints(ca=True, path_length=None if issuer is None else path_length)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    b = b.add_extension(constraints, critical=True).add_extension(usage, critical=True)
    return b.sign(signer_key, hashes.SHA256())


def _key_usage(*, digital_signature: bool = False, content_commitment: bool = False,
               key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=content_commitment,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)


def _crl_dp(set_name: str) -> x509.CRLDistributionPoints:
    # Placeholder URL: .invalid never resolves (RFC 2606), so nothing fetches it by accident.
    return x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(f"http://crl.invalid/{set_name}.crl")],
        relative_name=None, reasons=None, crl_issuer=None)])


def _policies(oid: str) -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(oid), None)])


def _gip(oid: x509.ObjectIdentifier, der: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, der)


def _card_cert(spec: _CardSpec, serial_no: int, key: rsa.RSAPrivateKey, issuer: _Ca | None,
               set_name: str, test_chain: bool, now: datetime,
               forger: _CaKey | None = None) -> x509.Certificate:
    """A card certificate issued by ``issuer`` (self-signed when None); ``forger`` signs in the issuer's place."""
    if spec.validity == "expired":
        nb, na = now - timedelta(days=3 * 365), now - timedelta(days=1)
    elif spec.validity == "future":
        nb, na = now + timedelta(days=1), now + timedelta(days=3 * 365)
    else:
        nb, na = now - timedelta(days=1), now + timedelta(days=3 * 365)
    signer_name = issuer.name if issuer else spec.subject
    signer_key = issuer.key if issuer else key
    b = _builder(spec.subject, signer_name, key.public_key(), signer_key.public_key(), nb, na)
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if spec.usage == "sign":
        # A card's signature certificate: nonRepudiation + emailProtection, not for TLS.
        b = (b.add_extension(_key_usage(content_commitment=True), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False))
    else:
        eku = ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.usage == "server-eku"
               else [ExtendedKeyUsageOID.CLIENT_AUTH, OID_MS_SMARTCARD_LOGIN])
        b = (b.add_extension(_key_usage(digital_signature=True), critical=True)
             .add_extension(x509.ExtendedKeyUsage(eku), critical=False))
    cn = spec.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str)
    b = b.add_extension(x509.SubjectAlternativeName(
        [x509.OtherName(OID_UPN, _der_utf8(f"{cn}@carte-cps.fr"))]), critical=False)
    b = b.add_extension(_crl_dp(set_name), critical=False)
    if test_chain:
        b = b.add_extension(_policies(POLICY_TEST_EE), critical=False)
    b = b.add_extension(_gip(OID_CATEGORY, bytes([0x04, 0x01, spec.category])), critical=False)
    if spec.card_type is not None:
        b = b.add_extension(_gip(OID_CARD_TYPE, _der_int(spec.card_type)), critical=False)
    b = b.add_extension(_gip(OID_CARD_SERIAL, _der_printable(f"8025000001/{2600000000 + serial_no}")),
                        critical=False)
    if spec.profession is not None:
        b = b.add_extension(_gip(OID_PROFESSION, _der_int(spec.profession)), critical=False)
    signer = forger or signer_key
    cert = b.sign(signer, hashes.SHA256())
    if spec.digest == "sha1":
        if not isinstance(signer, rsa.RSAPrivateKey):
            raise ValueError("a SHA-1 card needs an RSA issuer")
        return resign_sha1(cert, signer)
    return cert


# DER of the sha256WithRSAEncryption and sha1WithRSAEncryption OIDs: same length, last byte differs.
_OID_SHA256_RSA = bytes.fromhex("2a864886f70d01010b")
_OID_SHA1_RSA = bytes.fromhex("2a864886f70d010105")


def resign_sha1(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """The same certificate signed with SHA-1 (sha1WithRSAEncryption).

    Why by hand: cryptography refuses SHA-1 in ``CertificateBuilder.sign``, but a weak card is
    exactly what the tests need. Both OIDs and the signature keep their lengths, so swapping the
    algorithm in the TBS and outer fields, then the signature bytes at the end, keeps the DER valid.
    """
    der = cert.public_bytes(serialization.Encoding.DER)
    if der.count(_OID_SHA256_RSA) != 2:   # the TBS signature field and the outer one, nothing else
        raise ValueError("unexpected certificate layout for a SHA-1 re-signature")
    swapped = der.replace(_OID_SHA256_RSA, _OID_SHA1_RSA)
    tbs = x509.load_der_x509_certificate(swapped).tbs_certificate_bytes
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 (deliberately weak)
    if not swapped.endswith(cert.signature) or len(signature) != len(cert.signature):
        raise ValueError("signature is not the last field of the certificate")
    return x509.load_der_x509_certificate(swapped[: -len(signature)] + signature)


def _server_cert(flow: str, key: rsa.RSAPrivateKey, issuer: _Ca, set_name: str,
                 now: datetime) -> x509.Certificate:
    if flow == "2bis":
        # IGC CPS structure layout: C, O=GIP-CPS, L, OU=<IdNat_Struct>, CN.
        subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GIP-CPS"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, _PARIS),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, IDNAT_STRUCT_OPERATOR),
            x509.NameAttribute(NameOID.COMMON_NAME, "frontimap.mssante.fr"),
        ])
        names = [f"{n}.mssante.fr" for n in MSSANTE_NAMES]
        policy = POLICY_CPS_CLASSE4
    else:
        # IGC Santé structure layout: C, ST, O=<legal name>, OU=<IdNat_Struct>, CN.
        subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, _PARIS),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AGENCE DU NUMERIQUE EN SANTE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, IDNAT_STRUCT_OPERATOR),
            x509.NameAttribute(NameOID.COMMON_NAME, "frontimap-igcsante.mssante.fr"),
        ])
        names = [f"{n}-igcsante.mssante.fr" for n in MSSANTE_NAMES]
        policy = POLICY_EL_ORG
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in [*names, "localhost"]]
    sans += [x509.IPAddress(ip_address("127.0.0.1")), x509.IPAddress(ip_address("::1"))]
    b = _builder(subject, issuer.name, key.public_key(), issuer.key.public_key(),
                 now - timedelta(days=1), now + timedelta(days=3 * 365))
    b = (b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.SubjectAlternativeName(sans), critical=False)
         .add_extension(_policies(policy), critical=False)
         .add_extension(_crl_dp(set_name), critical=False)
         # Product category 0x03: software certificate (as on the real server samples).
         .add_extension(_gip(OID_CATEGORY, b"\x04\x01\x03"), critical=False))
    return b.sign(issuer.key, hashes.SHA256())


# --------------------------------------------------------------------------- files
def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """Write a private key readable by its owner only (created 0600, re-chmodded if it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def _layout(dest: Path) -> TestPki:
    """The paths of a PKI in ``dest`` (the same whether freshly built or loaded)."""
    auth: dict[str, AuthorityFiles] = {}
    for spec in _ca_specs():
        d = dest / "authorities" / spec.name
        auth[spec.name] = AuthorityFiles((d / "root.pem",), (d / "intermediate.pem",),
                                         (d / "root.key",), (d / "intermediate.key",))

    def kp(d: Path) -> KeyPair:
        return KeyPair(d / "cert.pem", d / "key.pem", d / "chain.pem")

    return TestPki(root=dest, authorities=auth,
                   servers={s: kp(dest / "servers" / s) for s in SERVERS},
                   cards={c.name: kp(dest / "cards" / c.name) for c in CARDS},
                   unknown_ca_root=dest / "unknown-ca" / "root.pem")


def _load(dest: Path, now: datetime) -> TestPki | None:
    """The PKI already in ``dest`` if it is of this layout version, complete, and still shaped as meant."""
    try:
        manifest = json.loads((dest / "manifest.json").read_text())
        fresh_until = datetime.fromisoformat(manifest["fresh_until"])
        generated_at = datetime.fromisoformat(manifest["generated_at"])
        if manifest.get("version") != LAYOUT_VERSION:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The not-yet-valid card becomes valid a day after generation: regenerate rather than lie.
    # A PKI made "in the future" of ``now`` has good cards that are not valid yet: regenerate too.
    if not generated_at <= now < fresh_until:
        return None
    pki = _layout(dest)
    files = [pki.unknown_ca_root, *(p for kp in (*pki.servers.values(), *pki.cards.values())
                                    for p in (kp.cert, kp.key, kp.chain))]
    files += [p for a in pki.authorities.values() for p in (*a.roots, *a.intermediates)]
    return pki if all(p.is_file() for p in files) else None


def build(dest: Path, *, now: datetime | None = None) -> TestPki:
    """Write the test PKI into ``dest`` (or load the one already there) and return its paths.

    Idempotent: a complete PKI of the same ``LAYOUT_VERSION`` whose time-relative cards are still
    bad in the intended way is reused. ``now`` (aware; default: the current time) anchors every
    validity period, so tests can build a PKI "as of" another date.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    existing = _load(dest, now)
    if existing is not None:
        return existing
    pki = _layout(dest)
    specs = _ca_specs()
    # CA and server keys, then one key per card (of the card's size), then sub-CA and forger keys.
    sizes = [2048] * (2 * len(specs) + 2 + len(SERVERS)) + [c.key_bits for c in CARDS]
    # RSA generation releases the GIL: a thread pool keeps the whole build near one second.
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        key_list = list(pool.map(lambda bits: rsa.generate_private_key(65537, bits), sizes))
    keys: Iterator[rsa.RSAPrivateKey] = iter(key_list)

    issuing, roots = _write_cas(pki, specs, keys, now)
    uk_root, uk_inter = _write_unknown_ca(pki, keys, now)
    _write_servers(pki, issuing, keys, now)
    _write_cards(pki, issuing, roots, uk_root, uk_inter, keys, now)
    _write_manifest(dest, pki, now)
    return pki


Keys = Iterator[rsa.RSAPrivateKey]   # consumed in build's order: the key sizes were listed in it


def _write_cas(pki: TestPki, specs: tuple[_CaSpec, ...], keys: Keys, now: datetime
               ) -> tuple[dict[str, tuple[_Ca, bool]], dict[str, _Ca]]:
    """Each authority set's root and intermediate: the issuing CA (and whether it is TEST) and the root, by set."""
    issuing: dict[str, tuple[_Ca, bool]] = {}
    roots: dict[str, _Ca] = {}
    for spec in specs:
        rk = next(keys)
        root = _Ca(spec.root, rk, _ca_cert(spec.root, rk, None, now))
        roots[spec.name] = root
        ik = next(keys)
        inter = _Ca(spec.intermediate, ik, _ca_cert(spec.intermediate, ik, root, now))
        files = pki.authorities[spec.name]
        _write(files.roots[0], _pem(root.cert))
        _write(files.intermediates[0], _pem(inter.cert))
        _write_key(files.root_keys[0], rk)
        _write_key(files.intermediate_keys[0], ik)
        issuing[spec.name] = (inter, spec.test)
    return issuing, roots


def _write_unknown_ca(pki: TestPki, keys: Keys, now: datetime) -> tuple[_Ca, _Ca]:
    """The rogue root and issuing CA no authority set trusts."""
    uk_root_name, uk_inter_name = _unknown_name("ROGUE ROOT CA"), _unknown_name("ROGUE ISSUING CA")
    rk = next(keys)
    uk_root = _Ca(uk_root_name, rk, _ca_cert(uk_root_name, rk, None, now))
    ik = next(keys)
    uk_inter = _Ca(uk_inter_name, ik, _ca_cert(uk_inter_name, ik, uk_root, now))
    _write(pki.unknown_ca_root, _pem(uk_root.cert))
    _write(pki.unknown_ca_root.with_name("intermediate.pem"), _pem(uk_inter.cert))
    return uk_root, uk_inter


def _write_servers(pki: TestPki, issuing: dict[str, tuple[_Ca, bool]], keys: Keys, now: datetime) -> None:
    """One server certificate per flow, issued by the set of that flow's PKI."""
    server_sets = {"2bis": "igc-cps-2bis", "igcsante": "igc-sante-elementaire-org"}
    for flow in SERVERS:
        key = next(keys)
        inter, _ = issuing[server_sets[flow]]
        cert = _server_cert(flow, key, inter, server_sets[flow], now)
        kp = pki.servers[flow]
        _write(kp.cert, _pem(cert))
        _write(kp.chain, _pem(cert) + _pem(inter.cert))
        _write_key(kp.key, key)


def _write_cards(pki: TestPki, issuing: dict[str, tuple[_Ca, bool]], roots: dict[str, _Ca], uk_root: _Ca,
                 uk_inter: _Ca, keys: Keys, now: datetime) -> None:
    """Every card of ``CARDS``, with the chain file its client would send."""
    card_keys = [next(keys) for _ in CARDS]
    for i, (card, key) in enumerate(zip(CARDS, card_keys, strict=True)):
        cas: list[_Ca] = []            # what the card's chain file carries after the card, nearest first
        if card.self_signed:
            issuer, set_name, test_chain = None, "self-signed", False
        elif card.authority is None:
            issuer, set_name, test_chain = uk_inter, "rogue", False
        elif card.sub_cas:
            # Sub-CAs under the set's root (its intermediate has path length 0): only the depth is wrong.
            test_chain, set_name, parent = issuing[card.authority][1], card.authority, roots[card.authority]
            for n in range(1, card.sub_cas + 1):
                name = _sante_ca(f"AC IGC-SANTE FORT SOUS-AC {n}", test_chain)
                # P-256: as strong as RSA-2048 for the weak-key rule, and free to generate.
                sk = ec.generate_private_key(ec.SECP256R1())
                parent = _Ca(name, sk, _ca_cert(name, sk, parent, now, path_length=None))
                cas.insert(0, parent)
            issuer = parent
        else:
            issuer, test_chain = issuing[card.authority]
            set_name = card.authority
        if issuer is not None and not cas:
            cas = [issuer]
        forger = uk_root.key if card.forged else None   # any stranger's key will do: the rogue root's
        cert = _card_cert(card, i, key, issuer, set_name, test_chain, now, forger)
        kp = pki.cards[card.name]
        _write(kp.cert, _pem(cert))
        _write(kp.chain, _pem(cert) + b"".join(_pem(ca.cert) for ca in cas))
        _write_key(kp.key, key)


def _write_manifest(dest: Path, pki: TestPki, now: datetime) -> None:
    """The manifest that marks the PKI complete."""
    manifest = {"version": LAYOUT_VERSION, "generated_at": now.isoformat(),
                "fresh_until": (now + timedelta(days=1)).isoformat(),
                "authorities": sorted(pki.authorities), "servers": list(SERVERS),
                "cards": [c.name for c in CARDS]}
    # Written last and atomically: a half-built PKI never looks complete to the next run.
    tmp = dest / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(dest / "manifest.json")
