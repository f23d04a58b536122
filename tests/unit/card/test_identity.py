"""sniproxy.card (identity, names, der, oids) on the real public samples (tests/data/samples) and on hostile
encodings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sniproxy.card.der import der_integer, der_octet, der_text
from sniproxy.card.identity import IDENTITY_FIELDS, CardIdentity, identity_fields, parse_identity
from sniproxy.card.names import is_test_issuer
from sniproxy.card.oids import OID_CARD_SERIAL, OID_CARD_TYPE, OID_CATEGORY, OID_PROFESSION, OID_UPN

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def load(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((SAMPLES / name).read_bytes())


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# Every field of every real sample, read with `openssl x509 -text` and the raw extension bytes.
EXPECTED: dict[str, dict[str, object]] = {
    "EE-TEST-ST-PP-CPE-card-auth-2600301752.pem": dict(
        layout="igc-sante", idnat_ps="30B0057881/CPET0002", idnat_struct="10B0057881",
        profession="Personnel santé ou social", given_name="CHARLES", surname="ADMINISTRATIF-CH057880002",
        organization="HOPITAL DES 3 DAMES", department="Paris (75)",
        serial="6BC2874B9334BED19414E8EB4FB317D4",
        sha256="5da0d21f73eb04e7f36737ef7be684a0dbfd61fbe21c6ee3b3893578aa86e321",
        subject="GN=CHARLES+CN=30B0057881/CPET0002+SN=ADMINISTRATIF-CH057880002,"
                "title=Personnel santé ou social,OU=10B0057881,O=HOPITAL DES 3 DAMES,ST=Paris (75),C=FR",
        issuer="CN=TEST AC IGC-SANTE STANDARD PERSONNES,OU=IGC-SANTE TEST,OU=0002 187512751,"
               "O=ASIP-SANTE,C=FR",
        not_before=utc(2017, 3, 23, 15, 16, 43), not_after=utc(2020, 3, 23, 15, 16, 43),
        card_type=2, card_type_name="CPE", category=0x80, is_test_card=True, profession_code=None,
        card_serial="8025000001/2600301752", upn="30B0057881/CPET0002@carte-cps.fr"),
    "EE-TEST-FO-PP-CPS-card-sign-2800636234.pem": dict(
        layout="igc-sante", idnat_ps="00B6087510", idnat_struct=None, profession="Infirmier",
        given_name="OLIVIER", surname="INFIRMCS ADELI8751", organization=None, department=None,
        serial="63DAFFCFC8034BDCE06765D525029B44",
        sha256="67053d18fde08a0921ce05c1c2a3da944dcbeb6ea633628c63b1f35c3efe3082",
        subject="GN=OLIVIER+CN=00B6087510+SN=INFIRMCS ADELI8751,title=Infirmier,C=FR",
        issuer="CN=TEST AC IGC-SANTE FORT PERSONNES,OU=IGC-SANTE TEST,OU=0002 187512751,O=ASIP-SANTE,C=FR",
        not_before=utc(2020, 9, 15, 12, 20), not_after=utc(2023, 9, 15, 12, 20),
        card_type=0, card_type_name="CPS", category=0x80, is_test_card=True, profession_code=60,
        card_serial="8025000001/2800636234", upn=None),
    "EE-PROD-EL-ORG-server-tops.demo.asipsante.fr.pem": dict(
        layout="igc-sante", idnat_ps="tops.demo.asipsante.fr", idnat_struct="318751275100020",
        profession=None, given_name=None, surname=None,
        organization="AGENCE DES SYSTEMES D'INFORMATION PARTAG", department="Paris (75)",
        serial="11C9D61491E64DC30A1E67E63B4865B1",
        sha256="ebe1d2688a7ef6ed4e48e9baec1ff477b1ad8cc3405a8ebfbf3d9fdedb8215b7",
        issuer="CN=AC IGC-SANTE ELEMENTAIRE ORGANISATIONS,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR",
        not_before=utc(2019, 10, 10, 13, 13, 29), not_after=utc(2022, 10, 10, 13, 13, 29),
        card_type=None, card_type_name=None, category=0x03, is_test_card=False, profession_code=None,
        card_serial=None, upn=None),
    "EE-TEST-EL-ORG-sign-testsign.test.asipsante.fr.pem": dict(
        layout="igc-sante", idnat_ps="testsign.test.asipsante.fr", idnat_struct="300000000077081",
        organization="MINISTERE DE TEST7708", department="Côte-d'Or (21)",
        serial="1D5DE25E3DC14BDE0CE9F4FF56DC993E",
        sha256="dd61676299e7cc01a19c249417f2da79bf4d572f7f667266b877640c27526861",
        category=0x83, is_test_card=True, card_type=None),
    "EE-TEST-IGCCPS-classe4-server-cpxservices.tra.asipsante.fr.pem": dict(
        # IGC CPS layout: department from L, O (here "TEST") is the PKI's, not the structure's.
        layout="igc-cps", idnat_ps="cpxservices.tra.asipsante.fr", idnat_struct="318751275100020",
        profession=None, organization=None, department="Paris (75)",
        serial="3030303132303739303040DC926A8DAA",
        sha256="57d1757c88e4f0a426c5bc41edfb6d845008b2591757ca06c3d2eb68101e1f37",
        issuer="OU=AC-CLASSE-4-TEST,O=GIP-CPS-TEST,C=FR",
        not_before=utc(2015, 7, 22, 9, 20, 10), not_after=utc(2018, 7, 22, 9, 20, 10),
        category=0x82, is_test_card=True, card_type=None, upn=None),
}


def test_every_sample_is_covered() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.pem")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_sample(name: str) -> None:
    ident = parse_identity(load(name), authority="some-set")
    assert ident.authority == "some-set"
    for key, value in EXPECTED[name].items():
        assert getattr(ident, key) == value, key
    assert ident.not_before.tzinfo is not None


def test_multi_valued_rdn_is_not_split_on_slash_or_plus() -> None:
    ident = parse_identity(load("EE-TEST-ST-PP-CPE-card-auth-2600301752.pem"))
    # The CPE CN holds a "/" and shares its RDN with GN and SN: a string split would break both.
    assert ident.idnat_ps == "30B0057881/CPET0002"
    assert ident.authority is None


@pytest.mark.parametrize(("name", "expected"), [
    ("EE-TEST-ST-PP-CPE-card-auth-2600301752.pem", True),
    ("EE-TEST-FO-PP-CPS-card-sign-2800636234.pem", True),
    ("EE-TEST-EL-ORG-sign-testsign.test.asipsante.fr.pem", True),
    ("EE-TEST-IGCCPS-classe4-server-cpxservices.tra.asipsante.fr.pem", True),
    ("EE-PROD-EL-ORG-server-tops.demo.asipsante.fr.pem", False),
])
def test_is_test_issuer_on_samples(name: str, expected: bool) -> None:
    assert is_test_issuer(load(name).issuer) is expected


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


C, ORG, OU, CN = (NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
                  NameOID.COMMON_NAME)


@pytest.mark.parametrize(("name", "expected"), [
    (_name((C, "FR"), (ORG, "GIP-CPS-TEST"), (OU, "AC-CLASSE-1-TEST")), True),
    (_name((C, "FR"), (ORG, "GIP-CPS"), (OU, "AC-CLASSE-4-TEST")), True),
    (_name((ORG, "ASIP-SANTE"), (OU, "IGC-SANTE TEST")), True),
    (_name((ORG, "ASIP-SANTE"), (CN, "TEST AC IGC-SANTE FORT PERSONNES")), True),
    (_name((CN, "test ac lower case")), True),
    (_name((C, "FR"), (ORG, "GIP-CPS"), (OU, "AC-CLASSE-1")), False),
    (_name((ORG, "ASIP-SANTE"), (OU, "IGC-SANTE"), (CN, "AC IGC-SANTE FORT PERSONNES")), False),
    (_name((ORG, "MINISTERE DE TEST7708")), False),      # TEST glued to digits is not the TEST marker
    (_name((CN, "AC CONTEST")), False),
    (_name((CN, "TESTAMENT CA")), False),
    (_name((CN, "AC TEST")), False),                   # CN must START with TEST
    (x509.Name([]), False),
])
def test_is_test_issuer(name: x509.Name, expected: bool) -> None:
    assert is_test_issuer(name) is expected


# --------------------------------------------------------------------------- DER decoder
@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x02\x01\x00", 0), (b"\x02\x01\x3c", 60), (b"\x02\x01\xff", -1), (b"\x02\x02\x00\x80", 128),
    (b"\x02\x81\x01\x05", None),              # non-minimal long-form length
    (b"\x02\x00", None), (b"\x02", None), (b"", None),
    (b"\x02\x02\x01", None),                   # truncated
    (b"\x02\x01\x01\x00", None),               # trailing byte
    (b"\x04\x01\x01", None),                   # wrong tag
    (b"\x02\x09" + b"\x01" * 9, None),         # implausibly large
    (b"\x1f\x02\x01\x00", None),               # multi-byte tag
    (b"\x02\x82\x00\x01\x01", None),           # non-minimal 2-byte length
    (b"\x02\x83\x00\x00\x01\x01", None),       # 3-byte length form refused
])
def test_der_integer(raw: bytes, expected: int | None) -> None:
    assert der_integer(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x04\x01\x00", 0), (b"\x04\x01\x80", 0x80), (b"\x04\x01\x83", 0x83),
    (b"\x04\x02\x00\x80", None), (b"\x04\x00", None), (b"\x02\x01\x80", None), (b"\x04\x01", None),
])
def test_der_octet(raw: bytes, expected: int | None) -> None:
    assert der_octet(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x13\x03abc", "abc"), (b"\x16\x03a/b", "a/b"), (b"\x0c\x02\xc3\xa9", "é"), (b"\x04\x02ok", "ok"),
    (b"\x0c\x02\xc3", None),                   # length says 2, one byte present
    (b"\x0c\x01\xff", None),                   # invalid UTF-8
    (b"\x13\x01\xe9", None),                   # non-ASCII PrintableString
    (b"\x13\x03a\nb", None),                   # control character (log forging)
    (b"\x02\x01\x00", None),                   # INTEGER is not text
    (b"\x0c\x82\x01\x01" + b"a" * 257, None),  # too long for these extensions
    (b"\x0c\x81\x80" + b"a" * 128, "a" * 128),  # long-form length, correct
])
def test_der_text(raw: bytes, expected: str | None) -> None:
    assert der_text(raw) == expected


# --------------------------------------------------------------------------- synthetic certificates
_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(subject: x509.Name, issuer: x509.Name, exts: list[x509.ExtensionType]) -> x509.Certificate:
    now = datetime.now(UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(_KEY.public_key())
         .serial_number(0x0ABC).not_valid_before(now - timedelta(days=1))
         .not_valid_after(now + timedelta(days=1)))
    for ext in exts:
        b = b.add_extension(ext, critical=False)
    return b.sign(_KEY, hashes.SHA256())


def _unrec(oid: x509.ObjectIdentifier, raw: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, raw)


CPS_ISSUER = _name((C, "FR"), (ORG, "GIP-CPS"), (OU, "AC-CLASSE-1"))
CPS_CARD = _name((C, "FR"), (ORG, "GIP-CPS"), (NameOID.LOCALITY_NAME, "Lyon (69)"), (OU, "10B0012345"),
                 (OU, "Médecin"), (CN, "810001234567"), (NameOID.SURNAME, "DUPONT"),
                 (NameOID.GIVEN_NAME, "JEAN"))


def test_malformed_private_extensions_give_none_never_raise() -> None:
    cert = _cert(CPS_CARD, CPS_ISSUER, [
        _unrec(OID_CARD_TYPE, b"\x02\x05\x00"),      # length beyond the value
        _unrec(OID_CATEGORY, b"\x04\x02\x80\x00"),   # two bytes: not a category
        _unrec(OID_PROFESSION, b"\xff"),
        _unrec(OID_CARD_SERIAL, b"\x13\x05ab\x00cd"),
        x509.SubjectAlternativeName([x509.OtherName(OID_UPN, b"\x02\x01\x05")]),
    ])
    ident = parse_identity(cert)
    assert (ident.card_type, ident.card_type_name, ident.category, ident.profession_code,
            ident.card_serial, ident.upn, ident.is_test_card) == (None, None, None, None, None, None, False)


def test_igc_cps_card_layout_and_card_types() -> None:
    cert = _cert(CPS_CARD, CPS_ISSUER, [
        _unrec(OID_CARD_TYPE, b"\x02\x01\x03"), _unrec(OID_CATEGORY, b"\x04\x01\x00"),
        _unrec(OID_PROFESSION, b"\x02\x01\x0a"),
        x509.SubjectAlternativeName([x509.DNSName("x.example"),
                                     x509.OtherName(x509.ObjectIdentifier("1.2.3.4"), b"\x0c\x01x"),
                                     x509.OtherName(OID_UPN, b"\x0c\x19810001234567@carte-cps.fr")]),
    ])
    ident = parse_identity(cert, "igc-cps-2ter")
    assert ident.layout == "igc-cps"
    assert (ident.idnat_ps, ident.idnat_struct, ident.profession) == ("810001234567", "10B0012345", "Médecin")
    assert (ident.given_name, ident.surname, ident.department) == ("JEAN", "DUPONT", "Lyon (69)")
    assert ident.organization is None           # O=GIP-CPS is the PKI, not the structure
    assert (ident.card_type, ident.card_type_name, ident.category, ident.is_test_card) == (3, "CPA", 0, False)
    assert ident.profession_code == 10
    assert ident.upn == "810001234567@carte-cps.fr"
    assert ident.serial == "ABC"


def test_unknown_card_type_code_has_no_name() -> None:
    ident = parse_identity(_cert(CPS_CARD, CPS_ISSUER, [_unrec(OID_CARD_TYPE, b"\x02\x01\x07")]))
    assert (ident.card_type, ident.card_type_name) == (7, None)


def test_layout_from_subject_when_issuer_is_foreign() -> None:
    foreign = _name((C, "FR"), (ORG, "ROGUE PKI"), (CN, "ROGUE CA"))
    sante = _name((C, "FR"), (NameOID.STATE_OR_PROVINCE_NAME, "Nord (59)"), (CN, "x"))
    assert parse_identity(_cert(sante, foreign, [])).layout == "igc-sante"
    assert parse_identity(_cert(CPS_CARD, foreign, [])).layout == "igc-cps"
    plain = parse_identity(_cert(_name((CN, "only")), foreign, []))
    assert plain.layout == "unknown"
    assert (plain.idnat_ps, plain.idnat_struct, plain.category, plain.upn) == ("only", None, None, None)


def test_identity_fields_is_flat_and_skips_none() -> None:
    ident = parse_identity(load("EE-TEST-ST-PP-CPE-card-auth-2600301752.pem"), "igc-sante-standard-pp-test")
    fields = identity_fields(ident)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert fields["idnat_ps"] == "30B0057881/CPET0002"
    assert fields["category"] == "0x80"
    assert fields["card_type"] == "2"
    assert fields["card_type_name"] == "CPE"
    assert fields["is_test_card"] == "true"
    assert fields["not_after"] == "2020-03-23T15:16:43+00:00"
    assert fields["authority"] == "igc-sante-standard-pp-test"
    assert "profession_code" not in fields        # absent on this card
    server = identity_fields(parse_identity(load("EE-PROD-EL-ORG-server-tops.demo.asipsante.fr.pem")))
    assert "given_name" not in server and "authority" not in server
    assert server["is_test_card"] == "false"
    # every non-None identity field is there: all the dataclass's fields but the PROXY v2 facts, in their order
    assert IDENTITY_FIELDS == tuple(k for k in CardIdentity.__dataclass_fields__ if k != "facts")
    assert set(fields) == {k for k in IDENTITY_FIELDS if getattr(ident, k) is not None}
    assert list(fields) == [k for k in IDENTITY_FIELDS if k in fields]


def test_identity_is_frozen() -> None:
    ident = parse_identity(load("EE-TEST-FO-PP-CPS-card-sign-2800636234.pem"))
    with pytest.raises(AttributeError):
        ident.idnat_ps = "x"  # type: ignore[misc]
