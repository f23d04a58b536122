"""sniproxy.card.names: which PKI a DN layout belongs to (the issuer first), attribute values, the ASCII DN form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from sniproxy.card.names import attrs, layout, openssl_dn

_KEY = ec.generate_private_key(ec.SECP256R1())
C, ORG, OU, CN = NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME
LOC, ST, TITLE = NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME, NameOID.TITLE


def _name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def _cert(subject: x509.Name, issuer: x509.Name) -> x509.Certificate:
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(_KEY.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .sign(_KEY, hashes.SHA256()))


SANTE_SUBJECT = _name((C, "FR"), (ST, "Paris (75)"), (TITLE, "Infirmier"), (CN, "810001234567"))
CPS_SUBJECT = _name((C, "FR"), (LOC, "Lyon (69)"), (OU, "10B0012345"), (CN, "810001234567"))
FOREIGN = _name((C, "FR"), (ORG, "Other PKI"), (CN, "Some CA"))


@pytest.mark.parametrize(("subject", "issuer", "expected"), [
    # The issuer decides over what the subject looks like.
    (SANTE_SUBJECT, _name((C, "FR"), (ORG, "GIP-CPS-TEST"), (OU, "AC-CLASSE-1")), "igc-cps"),
    (CPS_SUBJECT, _name((C, "FR"), (ORG, "ASIP-SANTE"), (CN, "AC X")), "igc-sante"),          # by its O alone
    (CPS_SUBJECT, _name((C, "FR"), (ORG, "Other"), (OU, "IGC-SANTE TEST"), (CN, "AC X")), "igc-sante"),  # by its OU
    (CPS_SUBJECT, _name((C, "FR"), (ORG, "Other"), (OU, "0002 187512751"), (CN, "AC X")), "igc-cps"),
    # A foreign issuer: the subject's own markers.
    (_name((C, "FR"), (ORG, "GIP-CPS"), (CN, "810001234567")), FOREIGN, "igc-cps"),               # O alone
    (_name((C, "FR"), (LOC, "Lyon (69)"), (CN, "x")), FOREIGN, "igc-cps"),                        # L alone
    (_name((C, "FR"), (ST, "Paris (75)"), (CN, "x")), FOREIGN, "igc-sante"),                    # ST alone
    (_name((C, "FR"), (TITLE, "Infirmier"), (CN, "x")), FOREIGN, "igc-sante"),                  # title alone
    (_name((C, "FR"), (ORG, "Clinique"), (CN, "x")), FOREIGN, "unknown"),
])
def test_layout(subject: x509.Name, issuer: x509.Name, expected: str) -> None:
    assert layout(_cert(subject, issuer)) == expected


def test_attribute_values_given_as_bytes_are_read_as_utf8_with_replacement() -> None:
    oid = NameOID.X500_UNIQUE_IDENTIFIER
    name = x509.Name([x509.NameAttribute(oid, b"\xc3\xa9\xff", _ASN1Type.BitString)])
    assert attrs(name, oid) == ["é\ufffd"]


def test_openssl_dn_keeps_printable_ascii_from_space_to_tilde() -> None:
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    assert openssl_dn(printable) == printable
    assert openssl_dn("\x1f") == "\\1F" and openssl_dn("\x7f") == "\\7F"
