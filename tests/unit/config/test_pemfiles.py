"""sniproxy.config.pemfiles.looks_test: an authority set's inferred profile follows the card check's rule."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sniproxy.card import is_test_issuer
from sniproxy.config.pemfiles import looks_test

_KEY = ec.generate_private_key(ec.SECP256R1())


def _ca(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(_KEY, hashes.SHA256()))


@pytest.mark.parametrize(("attrs", "test"), [
    (((NameOID.COMMON_NAME, "TEST AC IGC-SANTE FORT PERSONNES PHYSIQUES"),), True),
    (((NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST"), (NameOID.COMMON_NAME, "AC X")), True),
    (((NameOID.ORGANIZATION_NAME, "GIP-CPS-TEST"),), True),
    (((NameOID.COMMON_NAME, "AC IGC-SANTE FORT PERSONNES PHYSIQUES"),), False),
    # the word TEST inside another word says nothing: the card check does not call such an issuer test
    (((NameOID.ORGANIZATION_NAME, "CLINIQUE PROTESTANTE"), (NameOID.COMMON_NAME, "AC CLINIQUE")), False),
    (((NameOID.COMMON_NAME, "TESTAMENT AC"),), False),
])
def test_looks_test_agrees_with_the_card_check(attrs: tuple[tuple[x509.ObjectIdentifier, str], ...],
                                               test: bool) -> None:
    ca = _ca(*attrs)
    assert looks_test(ca) is test
    assert is_test_issuer(ca.subject) is test
