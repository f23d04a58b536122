"""Subject and issuer DNs of the IGC CPS and IGC Santé PKIs: reading them, and every text form sniproxy writes.

Owns: reading attributes through the library's RDN model (never by splitting a DN string: a card
subject puts ``GN + CN + SN`` in one multi-valued RDN, and a CPE's CN contains ``/``), the layout of a
subject (docs/domain.md, notice §3.2), the TEST authority rule for issuers, and the DN strings: the RFC
4514 form of the log event and PROXY v2 TLVs (``dn``) and the ASCII-escaped form of the HTTP headers
(``openssl_dn``). Must not: decide anything, log, or do I/O.
"""

from __future__ import annotations

import re
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

Layout = Literal["igc-cps", "igc-sante", "unknown"]

# RFC 4514 knows no short names for these; OpenSSL's (GN, SN, title) keep card subjects readable in logs.
_NAME_OVERRIDES = {NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN", NameOID.TITLE: "title"}
# "TEST" as a whole word or hyphen-separated suffix: GIP-CPS-TEST, IGC-SANTE TEST, AC-CLASSE-4-TEST,
# but not CONTEST or TEST7708.
_TEST_WORD = re.compile(r"(?<![A-Z0-9])TEST(?![A-Z0-9])", re.IGNORECASE)
_TEST_PREFIX = re.compile(r"TEST(?![A-Z0-9])", re.IGNORECASE)


def attrs(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    """Values of one attribute type in DN order, multi-valued RDNs included."""
    return [v if isinstance(v, str) else v.decode("utf-8", "replace")
            for v in (a.value for a in name.get_attributes_for_oid(oid))]


def first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The first value of one attribute type, wherever it sits; None when there is none."""
    values = attrs(name, oid)
    return values[0] if values else None


def dn(name: x509.Name) -> str:
    """RFC 4514 string, with GN, SN and title spelled as OpenSSL does (the log event and PROXY v2 TLVs)."""
    return name.rfc4514_string(_NAME_OVERRIDES)


def openssl_dn(text: str) -> str:
    """A ``dn`` string with non-ASCII escaped as ``\\XX`` UTF-8 bytes, as OpenSSL's ``XN_FLAG_RFC2253``
    (nginx ``$ssl_client_s_dn``) writes it: HTTP header values stay ASCII."""
    return "".join(c if 0x20 <= ord(c) < 0x7F else "".join(f"\\{b:02X}" for b in c.encode()) for c in text)


def layout(cert: x509.Certificate) -> Layout:
    """Which PKI's DN layout the subject follows.

    The issuer decides first (its O names the PKI); the subject's own layout markers are the
    fallback for a certificate from an unknown issuer (L or O=GIP-CPS: IGC CPS; ST or title: IGC Santé).
    """
    issuer_orgs = attrs(cert.issuer, NameOID.ORGANIZATION_NAME)
    if any(o.upper().startswith("GIP-CPS") for o in issuer_orgs):
        return "igc-cps"
    issuer_ous = attrs(cert.issuer, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if any(o.upper() == "ASIP-SANTE" for o in issuer_orgs) or any(
            u.upper().startswith("IGC-SANTE") for u in issuer_ous):
        return "igc-sante"
    subject = cert.subject
    if any(o.upper().startswith("GIP-CPS") for o in attrs(subject, NameOID.ORGANIZATION_NAME)) or \
            attrs(subject, NameOID.LOCALITY_NAME):
        return "igc-cps"
    if attrs(subject, NameOID.STATE_OR_PROVINCE_NAME) or attrs(subject, NameOID.TITLE):
        return "igc-sante"
    return "unknown"


def is_test_issuer(name: x509.Name) -> bool:
    """True when ``name`` (an issuer) is a TEST authority.

    IGC Santé test CAs have a CN starting with ``TEST`` and ``OU=IGC-SANTE TEST``; IGC CPS test CAs
    have no CN but ``O=GIP-CPS-TEST`` / ``OU=AC-CLASSE-4-TEST``.
    """
    if any(_TEST_PREFIX.match(cn.strip()) for cn in attrs(name, NameOID.COMMON_NAME)):
        return True
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
        if any(_TEST_WORD.search(v) for v in attrs(name, oid)):
            return True
    return False
