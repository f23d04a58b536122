"""Decode and validate one CRL, with no I/O and no clock of its own (``now`` is passed in).

Owns the rules a CRL must pass before it is used: it parses (DER or PEM), it names and is signed by
one of the candidate CA certificates, ``thisUpdate`` is not in the future, ``nextUpdate`` is
present, its CRL number never goes backwards, and a delta CRL is applied only on a base it names.
Every refusal is a ``CrlRejected`` (``sniproxy.crl.errors``) with a stable ``reason`` (used by logs,
``crl status`` and tests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sniproxy.crl.entries import der_header
from sniproxy.crl.errors import CrlRejected

#: Clock skew tolerated on ``thisUpdate`` (a CA's clock slightly ahead of ours is not an attack).
SKEW_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class CrlMeta:
    """What sniproxy keeps about a validated CRL besides its entries."""

    issuer_key: bytes            # ca_key() of the CA that signed it
    issuer: str                  # RFC 4514 text, for logs
    number: int | None
    base_number: int | None      # set on a delta CRL (Delta CRL Indicator)
    this_update: float           # POSIX seconds
    next_update: float
    entries: int
    sha256: str

    @property
    def is_delta(self) -> bool:
        """True for a delta CRL."""
        return self.base_number is not None


def ca_key(cert: x509.Certificate) -> bytes:
    """Identity of an issuing CA: its subject name and public key (not its certificate bytes).

    A CA re-issued with new validity dates keeps its name and key, and so its CRLs: keying on the
    certificate fingerprint would lose revocation for chains that carry the other copy.
    """
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(cert.subject.public_bytes() + b"\0" + spki).digest()


def decode(data: bytes) -> x509.CertificateRevocationList:
    """Parse a CRL given as DER or PEM; anything else (an HTML error page, a truncated body) is refused."""
    head = data.lstrip()[:64]
    try:
        if head.startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data.lstrip())
        elif head[:1] != b"\x30":
            kind = "HTML" if head[:1] == b"<" else "not DER or PEM"
            raise CrlRejected("not_a_crl", f"body is {kind} ({len(data)} bytes)")
        else:
            crl = x509.load_der_x509_crl(data)
        crl.issuer.rfc4514_string()  # cryptography parses names lazily: a malformed one fails here
        return crl
    except CrlRejected:
        raise
    except (ValueError, x509.InvalidVersion) as exc:
        raise CrlRejected("parse_error", f"cannot parse CRL ({len(data)} bytes): {exc}") from None


def der_of(crl: x509.CertificateRevocationList, data: bytes) -> bytes:
    """The DER of a decoded CRL: ``data`` itself when it was DER (re-encoding 50 MB costs seconds)."""
    return data if data[:1] == b"\x30" else crl.public_bytes(Encoding.DER)


def _ext_int(crl: x509.CertificateRevocationList, cls: type[x509.CRLNumber] | type[x509.DeltaCRLIndicator]
             ) -> int | None:
    try:
        value = crl.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    return value.crl_number


def tbs_of(der: bytes) -> bytes:
    """The signed part (tbsCertList, header included) of a CRL's DER, as is.

    ``cryptography``'s ``is_signature_valid`` re-encodes it first: about 1.7 s for a million entries.
    The CRL has already been parsed strictly as DER, so the bytes as received are that encoding.
    """

    _, start, end = der_header(der, 0, len(der))       # CertificateList
    _, _, tbs_end = der_header(der, start, end)      # tbsCertList, header included in what is signed
    return der[start:tbs_end]


def signed_by(crl: x509.CertificateRevocationList, der: bytes | None, key: object) -> bool:
    """True when ``key`` verifies the CRL's signature (over the received bytes when ``der`` is given)."""
    params = crl.signature_algorithm_parameters
    try:
        if der is not None and isinstance(key, rsa.RSAPublicKey) and isinstance(params, padding.AsymmetricPadding):
            algorithm = crl.signature_hash_algorithm
            if algorithm is None:
                return False
            key.verify(crl.signature, tbs_of(der), params, algorithm)
            return True
        if der is not None and isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(crl.signature, tbs_of(der), params)
            return True
        return crl.is_signature_valid(key)  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        return False


def find_issuer(crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate],
                der: bytes | None = None) -> x509.Certificate:
    """The candidate CA whose name the CRL carries and whose key signed it (``der``: the CRL as received)."""
    named = [ca for ca in cas if ca.subject == crl.issuer]
    if not named:
        raise CrlRejected("wrong_issuer", f"issuer {crl.issuer.rfc4514_string()} is no CA of this authority set")
    for ca in named:
        if signed_by(crl, der, ca.public_key()):
            return ca
    raise CrlRejected("bad_signature", f"signature does not verify with the key of {crl.issuer.rfc4514_string()}")


def validate(data: bytes, cas: Sequence[x509.Certificate], now: datetime
             ) -> tuple[x509.CertificateRevocationList, x509.Certificate, CrlMeta]:
    """Decode ``data`` and check it on its own (not against the CRL currently in force)."""
    crl = decode(data)
    ca = find_issuer(crl, cas, data if data[:1] == b"\x30" else None)
    this_update = crl.last_update_utc.timestamp()
    if this_update > now.timestamp() + SKEW_SECONDS:
        raise CrlRejected("future_this_update", f"thisUpdate {crl.last_update_utc.isoformat()} is in the future")
    if crl.next_update_utc is None:
        raise CrlRejected("no_next_update", "nextUpdate is absent")
    next_update = crl.next_update_utc.timestamp()
    if next_update <= this_update:
        raise CrlRejected("bad_dates", "nextUpdate is not after thisUpdate")
    der = der_of(crl, data)
    meta = CrlMeta(
        issuer_key=ca_key(ca),
        issuer=crl.issuer.rfc4514_string(),
        number=_ext_int(crl, x509.CRLNumber),
        base_number=_ext_int(crl, x509.DeltaCRLIndicator),
        this_update=this_update,
        next_update=next_update,
        entries=len(crl),
        sha256=hashlib.sha256(der).hexdigest(),
    )
    return crl, ca, meta


def check_not_older(new: CrlMeta, current: CrlMeta | None) -> None:
    """Refuse a rollback: a CRL older than the one in force (by CRL number, else by thisUpdate)."""
    if current is None:
        return
    if new.number is not None and current.number is not None:
        if new.number < current.number:
            raise CrlRejected("rollback", f"CRL number {new.number} is older than {current.number} in force")
        if new.number == current.number and new.sha256 != current.sha256:
            raise CrlRejected("rollback", f"CRL number {new.number} reused with different content")
    elif new.this_update < current.this_update:
        raise CrlRejected("rollback", "thisUpdate is older than the CRL in force")
    elif current.number is not None and new.number is None:
        raise CrlRejected("rollback", "CRL number missing where the CRL in force has one")


def check_delta_base(delta: CrlMeta, base: CrlMeta | None) -> None:
    """RFC 5280 §5.2.4: a delta applies to a complete CRL numbered at least its Base CRL Number."""
    assert delta.base_number is not None
    if base is None:
        raise CrlRejected("delta_without_base", f"delta on base {delta.base_number} but no base CRL is in force")
    if base.number is None or base.number < delta.base_number:
        raise CrlRejected("delta_base_mismatch",
                          f"delta needs base CRL number >= {delta.base_number}, base in force is {base.number}")
    if delta.number is not None and delta.number <= base.number:
        raise CrlRejected("delta_obsolete", f"delta number {delta.number} is not newer than base {base.number}")
