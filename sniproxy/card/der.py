"""The tiny DER reader for the GIP-CPS private extensions and the UPN otherName of card certificates.

Owns the decoding of the raw extension values a client sends before anything about it is trusted:
a malformed value yields ``None``, never an exception. Must not: decide anything from a value (that is
``sniproxy.tls.verify``), log, or do I/O.
"""

from __future__ import annotations

from cryptography import x509

# DER universal tags used by the GIP-CPS extensions and the UPN otherName.
_INTEGER, _OCTET_STRING = 0x02, 0x04
_UTF8_STRING, _PRINTABLE_STRING, _IA5_STRING = 0x0C, 0x13, 0x16
# Private extension values are a handful of bytes; anything larger is not what the PKI issues.
_MAX_INT_BYTES = 8
_MAX_TEXT_BYTES = 256


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


def raw_extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """The raw DER value of extension ``oid``; None when absent.

    ``b""`` when the library decoded the extension itself (it never does for the GIP-CPS OIDs): every
    ``der_*`` reader yields None on it, so a present but unexpected extension reads as unreadable,
    never as absent (``sniproxy.tls.verify`` fails closed on an unreadable category).
    """
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return value.value if isinstance(value, x509.UnrecognizedExtension) else b""


def int_extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> int | None:
    """A DER INTEGER private extension; None when absent or malformed."""
    raw = raw_extension(cert, oid)
    return der_integer(raw) if raw is not None else None
