"""SASL message encodings the proxy speaks itself (RFC 4422): EXTERNAL responses and PLAIN logins.

Pure functions; no I/O. Decoding refuses anything ambiguous (bad base64, NUL or line breaks in an
identity) with ``SaslError`` so a malformed client message can never be turned into a login.
"""

from __future__ import annotations

import base64
import binascii

from sniproxy.errors import SniproxyError


class SaslError(SniproxyError, ValueError):
    """A malformed SASL message from the client (still a ``ValueError``, as it always was)."""


def decode_external(response: str) -> str:
    """The authorization identity of an EXTERNAL response: ``=`` (or empty) means none asked (RFC 4959)."""
    text = response.strip()
    if text in ("", "="):
        return ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("response is not base64") from None
    try:
        authzid = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("authorization identity is not UTF-8") from None
    if any(c in authzid for c in "\0\r\n"):
        raise SaslError("authorization identity holds a control character")
    return authzid


def plain_response(authzid: str, authcid: str, password: str) -> str:
    """Base64 of ``authzid NUL authcid NUL password`` (RFC 4616), for a master-user login."""
    for part in (authzid, authcid, password):
        if "\0" in part:
            raise ValueError("NUL in a PLAIN field")
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode("ascii")


def xtext(value: str) -> str:
    """RFC 3461 xtext, as XCLIENT attribute values require: ``+XX`` for ``+``, ``=``, controls and spaces."""
    out = []
    for b in value.encode("utf-8"):
        if 33 <= b <= 126 and b not in (ord("+"), ord("=")):
            out.append(chr(b))
        else:
            out.append(f"+{b:02X}")
    return "".join(out)
