"""CRLs for the test PKI, signed with its CA keys (tests, demo and benchmarks; never production).

``make_crl`` writes what a real CA publishes: a base CRL or a delta (Delta CRL Indicator), with a
CRL number, thisUpdate/nextUpdate and per-entry reason codes, signed by an issuing CA's key (or by
any other key, to build a CRL with a bad signature).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.card import read_certs
from sniproxy.demo.pki import TestPki

Entry = tuple[int, datetime, x509.ReasonFlags | None]


def load_cert(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    return read_certs(path)[0]


def load_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    """An unencrypted PEM private key usable to sign a CRL."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key  # type: ignore[return-value]


def make_crl(issuer: x509.Certificate, key: CertificateIssuerPrivateKeyTypes, *,
             revoked: Iterable[Entry] = (), number: int = 1, delta_of: int | None = None,
             this_update: datetime | None = None, next_update: datetime | None = None,
             validity: timedelta = timedelta(days=7), pem: bool = False) -> bytes:
    """A CRL of ``issuer`` signed with ``key`` (SHA-256), as DER (or PEM)."""
    now = datetime.now(UTC).replace(microsecond=0)
    this_update = this_update or now - timedelta(minutes=5)
    next_update = next_update or this_update + validity
    entries = []
    for serial, date, reason in revoked:
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        if reason is not None:
            rb = rb.add_extension(x509.CRLReason(reason), critical=False)
        entries.append(rb.build())
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number))]
    if delta_of is not None:
        extensions.append(x509.Extension(x509.DeltaCRLIndicator.oid, True, x509.DeltaCRLIndicator(delta_of)))
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject, last_update=this_update, next_update=next_update,
        extensions=extensions, revoked_certificates=entries,
    )
    crl = builder.sign(key, hashes.SHA256())
    return crl.public_bytes(Encoding.PEM if pem else Encoding.DER)


def revoke(cert_path: Path, reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
           when: datetime | None = None) -> Entry:
    """A CRL entry revoking the certificate in ``cert_path``."""
    when = when or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return load_cert(cert_path).serial_number, when, reason


def write_crls(pki: TestPki, dest: Path, sets: Iterable[str], revoked_cards: Iterable[str] = ("revoked",),
               number: int | None = None) -> dict[str, list[Path]]:
    """Write an intermediate and a root CRL for each authority set in ``sets``; ``revoked_cards`` (names
    in ``pki.cards``) are listed in their issuer's CRL. Returns set name -> [intermediate CRL, root CRL].

    ``number`` defaults to the current time in seconds, so a rewrite is never a rollback of a cached copy.
    """
    number = int(time.time()) if number is None else number
    by_issuer: dict[str, list[Entry]] = {}
    for card in revoked_cards:
        cert = load_cert(pki.cards[card].cert)
        by_issuer.setdefault(cert.issuer.rfc4514_string(), []).append(revoke(pki.cards[card].cert))
    out: dict[str, list[Path]] = {}
    for name in sets:
        files = pki.authorities[name]
        paths = []
        for kind, cert_path, key_path in (("intermediate", files.intermediates[0], files.intermediate_keys[0]),
                                          ("root", files.roots[0], files.root_keys[0])):
            ca = load_cert(cert_path)
            der = make_crl(ca, load_key(key_path), revoked=by_issuer.get(ca.subject.rfc4514_string(), []),
                           number=number)
            paths.append(write_crl_file(dest, f"{name}-{kind}.crl", der))
        out[name] = paths
    return out


def write_crl_file(dest: Path, file_name: str, der: bytes) -> Path:
    """Write ``der`` as ``dest/file_name`` (folders created); returns the path."""
    path = dest / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(der)
    return path
