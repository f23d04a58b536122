"""The identity of a verified card, read once per handshake and handed to every consumer.

Owns ``CardIdentity`` (what a client or server certificate of the IGC CPS and IGC Santé PKIs says about its
holder, with the layout's fields put in their place), ``CardFacts`` (what the PROXY v2 SSL TLV says about
the certificate), the reading of both from a leaf, and the flat text view (``identity_fields``) that the log
event, the PROXY v2 identity TLVs, the login decision and the HTTP card headers all take their values from.
It reads an already verified certificate and never decides anything: authorization lives in
``sniproxy.tls.verify``. Must not: log, do I/O, or keep the certificate (the driver frees the parsed chain
right after the handshake; IMAP connections idle for hours).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sniproxy.card.der import der_octet, der_text, int_extension, raw_extension
from sniproxy.card.names import Layout, attrs, dn, first, layout
from sniproxy.card.oids import (
    CARD_TYPES,
    OID_CARD_SERIAL,
    OID_CARD_TYPE,
    OID_CATEGORY,
    OID_PROFESSION,
    OID_UPN,
    TEST_CARD_BIT,
)


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the PROXY v2 SSL TLV says about the client certificate, in HAProxy's spelling where it has one."""

    cn: str | None
    sig_alg: str | None
    key_alg: str | None


#: The facts of a certificate the library cannot fully name: the header then carries the flags without a CN.
NO_FACTS = CardFacts(cn=None, sig_alg=None, key_alg=None)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class CardIdentity:
    """What a certificate says about its holder, with the layout's fields put in their place.

    Immutable, so connections presenting the same card may share one (the driver does, through a
    weak-valued table: an identity is about 1.3 KiB of strings and an IMAP client opens several
    connections with one card).
    """

    layout: Layout
    idnat_ps: str | None           # CN: national identifier of the professional (or application name)
    idnat_struct: str | None       # first OU: structure identifier
    profession: str | None         # IGC CPS: second OU; IGC Santé: title
    given_name: str | None
    surname: str | None
    organization: str | None       # IGC Santé O; None for IGC CPS (its O is the PKI operator, GIP-CPS)
    department: str | None         # IGC CPS L, IGC Santé ST
    authority: str | None          # the authority set that verified the chain (caller's knowledge)
    serial: str                    # certificate serial, upper-case hex without 0x
    sha256: str                    # fingerprint of the DER, lower-case hex
    subject: str                   # RFC 4514 (GN, SN, title spelled as OpenSSL does)
    issuer: str                    # RFC 4514
    not_before: datetime           # timezone-aware UTC
    not_after: datetime
    card_type: int | None          # 1.2.250.1.71.1.2.2
    card_type_name: str | None     # CardType value
    category: int | None           # 1.2.250.1.71.1.2.5
    is_test_card: bool
    profession_code: int | None    # 1.2.250.1.71.1.2.7
    card_serial: str | None        # 1.2.250.1.71.1.2.3
    upn: str | None                # SAN otherName UPN
    # Not an identity field (not in ``identity_fields``): the PROXY v2 SSL TLV's view of the certificate.
    facts: CardFacts = NO_FACTS


@dataclass(frozen=True, slots=True)
class UnreadableCard:
    """A verified certificate the identity reader failed on: only the error's name is known.

    Defensive: the library validates names and extensions when it loads a certificate, and the verify
    callback has read them, so no known certificate gets here. Consumers see no identity field (the log
    event shows ``parse_error``), a PROXY v2 header with the certificate flags but no CN, no login, and an
    HTTP request needing a DN-bearing header fails (as the library's own error did when the leaf was parsed
    there) rather than carry a guessed DN.
    """

    error: str                     # the exception's class name, the log event's ``parse_error``
    facts: CardFacts = NO_FACTS


#: The fields ``identity_fields`` shows, in log order (every field of ``CardIdentity`` but ``facts``).
IDENTITY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CardIdentity) if f.name != "facts")


def _upn(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == OID_UPN:
            return der_text(other.value)
    return None


def _sig_alg(leaf: x509.Certificate) -> str | None:
    # OpenSSL short names, as HAProxy sends them (OBJ_nid2sn of the signature NID), e.g. RSA-SHA256.
    hash_alg = leaf.signature_hash_algorithm
    name = hash_alg.name.upper() if hash_alg is not None else None
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey) and name:
        return f"RSA-{name}"
    if isinstance(key, ec.EllipticCurvePublicKey) and name:
        return f"ecdsa-with-{name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    return None


def _key_alg(leaf: x509.Certificate) -> str | None:
    # HAProxy writes the key type and size run together: RSA2048, EC256.
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC{key.curve.key_size}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA{key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "ED448"
    return None


def card_facts(leaf: x509.Certificate) -> CardFacts:
    """CN, signature and key algorithm names of a verified card, in HAProxy's spelling where it has one.

    The CN is the first CommonName attribute wherever it sits (card subjects put GN + CN + SN in one
    multi-valued RDN, so it must be read through the RDN model, never a DN string). Raises on a
    signature algorithm the library cannot name (``read_card`` then uses ``NO_FACTS``).
    """
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    return CardFacts(cn=cn, sig_alg=_sig_alg(leaf), key_alg=_key_alg(leaf))


def parse_identity(cert: x509.Certificate, authority: str | None = None) -> CardIdentity:
    """Read the holder's identity from ``cert``; ``authority`` is the set that verified it, if known.

    Never raises on odd private extensions (they read as ``None``), nor on algorithms it cannot name
    (``facts`` is then ``NO_FACTS``); raises only if the library fails on the certificate itself.
    """
    subject = cert.subject
    kind = layout(cert)
    ous = attrs(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    title = first(subject, NameOID.TITLE)
    if kind == "igc-cps":
        # IGC CPS: OU=<IdNat_Struct>, OU=<profession>; O is the PKI operator, not the structure.
        profession = ous[1] if len(ous) > 1 else title
        organization = None
        department = first(subject, NameOID.LOCALITY_NAME)
    else:
        # IGC Santé and unknown layouts alike: an unknown one has no L (an L makes it IGC CPS, names.layout).
        profession = title
        organization = first(subject, NameOID.ORGANIZATION_NAME)
        department = first(subject, NameOID.STATE_OR_PROVINCE_NAME)
    card_type = int_extension(cert, OID_CARD_TYPE)
    type_name = CARD_TYPES.get(card_type) if card_type is not None else None
    category_raw = raw_extension(cert, OID_CATEGORY)
    category = der_octet(category_raw) if category_raw is not None else None
    serial_raw = raw_extension(cert, OID_CARD_SERIAL)
    return CardIdentity(
        layout=kind,
        idnat_ps=first(subject, NameOID.COMMON_NAME),
        idnat_struct=ous[0] if ous else None,
        profession=profession,
        given_name=first(subject, NameOID.GIVEN_NAME),
        surname=first(subject, NameOID.SURNAME),
        organization=organization,
        department=department,
        authority=authority,
        serial=format(cert.serial_number, "X"),
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        subject=dn(subject),
        issuer=dn(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        card_type=card_type,
        card_type_name=type_name.value if type_name is not None else None,
        category=category,
        is_test_card=category is not None and bool(category & TEST_CARD_BIT),
        profession_code=int_extension(cert, OID_PROFESSION),
        card_serial=der_text(serial_raw) if serial_raw is not None else None,
        upn=_upn(cert),
        facts=_facts_or_none(cert),
    )


def _facts_or_none(cert: x509.Certificate) -> CardFacts:
    try:
        return card_facts(cert)
    except Exception:  # an algorithm the library cannot name: the backend gets the SSL flags without the CN
        return NO_FACTS


def read_card(leaf: x509.Certificate, authority: str | None) -> CardIdentity | UnreadableCard:
    """The one read of a verified leaf per handshake (``parse_identity``, facts included). Never raises.

    A verified but odd certificate must not kill the connection: one the reader fails on becomes an
    ``UnreadableCard``.
    """
    try:
        return parse_identity(leaf, authority)
    except Exception as exc:
        return UnreadableCard(type(exc).__name__)


def identity_fields(card: CardIdentity | UnreadableCard | None) -> dict[str, str]:
    """A flat ``str -> str`` view: only fields that have a value; ``{}`` without a card.

    Dates are ISO 8601, the category is ``0xNN`` (its bits mean something), booleans ``true``/``false``.
    The log event shows it whole; the PROXY v2 identity TLVs, the login templates and the HTTP card
    headers take their values from it by field name. An unreadable card shows only ``parse_error``.
    """
    if card is None:
        return {}
    if isinstance(card, UnreadableCard):
        return {"parse_error": card.error}
    out: dict[str, str] = {}
    for name in IDENTITY_FIELDS:
        value = getattr(card, name)
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, datetime):
            out[name] = value.isoformat()
        elif name == "category":
            out[name] = f"0x{value:02x}"
        else:
            out[name] = str(value)
    return out
