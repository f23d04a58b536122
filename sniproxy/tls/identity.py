"""Normalized identity of a client (card) or server certificate of the IGC CPS and IGC Santé PKIs.

Owns the reading of the two subject DN layouts (docs/domain.md, notice §3.2) and of the GIP-CPS private
extensions (1.2.250.1.71.1.2.x). It reads an already verified certificate and never decides
anything: authorization lives in ``sniproxy.tls.verify``. No I/O, no logging.

Two rules hold throughout:
- DNs are read through the library's RDN model, never by splitting a DN string: a card subject puts
  ``GN + CN + SN`` in one multi-valued RDN, and a CPE's CN contains ``/``.
- The private extensions arrive as raw DER (``UnrecognizedExtension.value``) from a client we do not
  trust yet; a malformed value yields ``None``, never an exception.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sniproxy.config.model import CardType

Layout = Literal["igc-cps", "igc-sante", "unknown"]

OID_CARD_TYPE = x509.ObjectIdentifier("1.2.250.1.71.1.2.2")
OID_CARD_SERIAL = x509.ObjectIdentifier("1.2.250.1.71.1.2.3")
OID_CATEGORY = x509.ObjectIdentifier("1.2.250.1.71.1.2.5")
OID_PROFESSION = x509.ObjectIdentifier("1.2.250.1.71.1.2.7")
OID_UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")

_CARD_TYPES: dict[int, CardType] = {0: CardType.CPS, 1: CardType.CPF, 2: CardType.CPE, 3: CardType.CPA}

# DER universal tags used by the GIP-CPS extensions and the UPN otherName.
_INTEGER, _OCTET_STRING = 0x02, 0x04
_UTF8_STRING, _PRINTABLE_STRING, _IA5_STRING = 0x0C, 0x13, 0x16
# Private extension values are a handful of bytes; anything larger is not what the PKI issues.
_MAX_INT_BYTES = 8
_MAX_TEXT_BYTES = 256

# "TEST" as a whole word or hyphen-separated suffix: GIP-CPS-TEST, IGC-SANTE TEST, AC-CLASSE-4-TEST,
# but not CONTEST or TEST7708.
_TEST_WORD = re.compile(r"(?<![A-Z0-9])TEST(?![A-Z0-9])", re.IGNORECASE)
# RFC 4514 knows no short names for these; OpenSSL's (GN, SN, title) keep card subjects readable in logs.
_NAME_OVERRIDES = {NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN", NameOID.TITLE: "title"}
_TEST_PREFIX = re.compile(r"TEST(?![A-Z0-9])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CardIdentity:
    """What a certificate says about its holder, with the layout's fields put in their place."""

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


# --------------------------------------------------------------------------- tiny DER reader
def _der_tlv(raw: bytes) -> tuple[int, bytes] | None:
    """Read exactly one primitive TLV spanning all of ``raw``; None on anything unexpected.

    Only single-byte tags and definite lengths (short form, or long form up to 2 bytes, minimal)
    are accepted: that is all X.690 DER allows for values this small.
    """
    if len(raw) < 2:
        return None
    tag, first = raw[0], raw[1]
    if tag & 0x1F == 0x1F:          # multi-byte tag: never used by these extensions
        return None
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or len(raw) < 2 + count:
            return None
        length = int.from_bytes(raw[2:2 + count], "big")
        if length < 0x80 or (count == 2 and length < 0x100):  # DER demands the shortest form
            return None
        start = 2 + count
    if len(raw) != start + length:
        return None
    return tag, raw[start:]


def der_integer(raw: bytes) -> int | None:
    """Decode a DER INTEGER (two's complement); None if malformed or implausibly large."""
    tlv = _der_tlv(raw)
    if tlv is None or tlv[0] != _INTEGER:
        return None
    body = tlv[1]
    if not body or len(body) > _MAX_INT_BYTES:
        return None
    return int.from_bytes(body, "big", signed=True)


def der_octet(raw: bytes) -> int | None:
    """Decode a DER OCTET STRING of exactly one byte into its value; None otherwise."""
    tlv = _der_tlv(raw)
    if tlv is None or tlv[0] != _OCTET_STRING or len(tlv[1]) != 1:
        return None
    return tlv[1][0]


def der_text(raw: bytes) -> str | None:
    """Decode a DER UTF8String, PrintableString or IA5String (or an ASCII OCTET STRING); None otherwise."""
    tlv = _der_tlv(raw)
    if tlv is None or len(tlv[1]) > _MAX_TEXT_BYTES:
        return None
    tag, body = tlv
    try:
        if tag == _UTF8_STRING:
            text = body.decode("utf-8")
        elif tag in (_PRINTABLE_STRING, _IA5_STRING, _OCTET_STRING):
            text = body.decode("ascii")
        else:
            return None
    except UnicodeDecodeError:
        return None
    # Control characters would let a card forge log lines.
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return None
    return text


# --------------------------------------------------------------------------- certificate readers
def _raw_extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _upn(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == OID_UPN:
            return der_text(other.value)
    return None


def _attrs(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    """Values of one attribute type in DN order, multi-valued RDNs included."""
    return [v if isinstance(v, str) else v.decode("utf-8", "replace")
            for v in (a.value for a in name.get_attributes_for_oid(oid))]


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = _attrs(name, oid)
    return values[0] if values else None


def _layout(cert: x509.Certificate) -> Layout:
    """Which PKI's DN layout the subject follows.

    The issuer decides first (its O names the PKI); the subject's own layout markers are the
    fallback for a certificate from an unknown issuer (L or O=GIP-CPS: IGC CPS; ST or title: IGC Santé).
    """
    issuer_orgs = _attrs(cert.issuer, NameOID.ORGANIZATION_NAME)
    if any(o.upper().startswith("GIP-CPS") for o in issuer_orgs):
        return "igc-cps"
    issuer_ous = _attrs(cert.issuer, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if any(o.upper() == "ASIP-SANTE" for o in issuer_orgs) or any(
            u.upper().startswith("IGC-SANTE") for u in issuer_ous):
        return "igc-sante"
    subject = cert.subject
    if any(o.upper().startswith("GIP-CPS") for o in _attrs(subject, NameOID.ORGANIZATION_NAME)) or \
            _attrs(subject, NameOID.LOCALITY_NAME):
        return "igc-cps"
    if _attrs(subject, NameOID.STATE_OR_PROVINCE_NAME) or _attrs(subject, NameOID.TITLE):
        return "igc-sante"
    return "unknown"


def parse_identity(cert: x509.Certificate, authority: str | None = None) -> CardIdentity:
    """Read the holder's identity from ``cert``; ``authority`` is the set that verified it, if known.

    Never raises on odd private extensions (they read as ``None``).
    """
    subject = cert.subject
    layout = _layout(cert)
    ous = _attrs(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    title = _first(subject, NameOID.TITLE)
    if layout == "igc-cps":
        # IGC CPS: OU=<IdNat_Struct>, OU=<profession>; O is the PKI operator, not the structure.
        profession = ous[1] if len(ous) > 1 else title
        organization = None
        department = _first(subject, NameOID.LOCALITY_NAME)
    else:
        profession = title
        organization = _first(subject, NameOID.ORGANIZATION_NAME)
        department = _first(subject, NameOID.STATE_OR_PROVINCE_NAME)
        if department is None and layout == "unknown":
            department = _first(subject, NameOID.LOCALITY_NAME)
    card_type_raw = _raw_extension(cert, OID_CARD_TYPE)
    card_type = der_integer(card_type_raw) if card_type_raw is not None else None
    type_name = _CARD_TYPES.get(card_type) if card_type is not None else None
    category_raw = _raw_extension(cert, OID_CATEGORY)
    category = der_octet(category_raw) if category_raw is not None else None
    profession_raw = _raw_extension(cert, OID_PROFESSION)
    serial_raw = _raw_extension(cert, OID_CARD_SERIAL)
    return CardIdentity(
        layout=layout,
        idnat_ps=_first(subject, NameOID.COMMON_NAME),
        idnat_struct=ous[0] if ous else None,
        profession=profession,
        given_name=_first(subject, NameOID.GIVEN_NAME),
        surname=_first(subject, NameOID.SURNAME),
        organization=organization,
        department=department,
        authority=authority,
        serial=format(cert.serial_number, "X"),
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        subject=subject.rfc4514_string(_NAME_OVERRIDES),
        issuer=cert.issuer.rfc4514_string(_NAME_OVERRIDES),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        card_type=card_type,
        card_type_name=type_name.value if type_name is not None else None,
        category=category,
        is_test_card=category is not None and bool(category & 0x80),
        profession_code=der_integer(profession_raw) if profession_raw is not None else None,
        card_serial=der_text(serial_raw) if serial_raw is not None else None,
        upn=_upn(cert),
    )


def identity_fields(identity: CardIdentity) -> dict[str, str]:
    """A flat ``str -> str`` view for structured logs: only fields that have a value.

    Dates are ISO 8601, the category is ``0xNN`` (its bits mean something), booleans ``true``/``false``.
    """
    out: dict[str, str] = {}
    for f in fields(identity):
        name, value = f.name, getattr(identity, f.name)
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


def is_test_issuer(name: x509.Name) -> bool:
    """True when ``name`` (an issuer) is a TEST authority.

    IGC Santé test CAs have a CN starting with ``TEST`` and ``OU=IGC-SANTE TEST``; IGC CPS test CAs
    have no CN but ``O=GIP-CPS-TEST`` / ``OU=AC-CLASSE-4-TEST``.
    """
    if any(_TEST_PREFIX.match(cn.strip()) for cn in _attrs(name, NameOID.COMMON_NAME)):
        return True
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME):
        if any(_TEST_WORD.search(v) for v in _attrs(name, oid)):
            return True
    return False
