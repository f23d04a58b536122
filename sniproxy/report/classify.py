"""Pure facts about one ``connection`` event: which card PKI, which card type, did the client send SNI.

Read from the fields ``connection.py`` logs: ``identity`` (issuer, layout, authority, card_type_name,
idnat_ps) and, for refused cards that never got an identity, the top-level ``authority``.
"""

from __future__ import annotations

from typing import Any

PKI_2TER = "IGC CPS 2TER"
PKI_FORT = "IGC Santé Fort"
PKI_STANDARD = "IGC Santé Standard"
PKI_SANTE_OTHER = "IGC Santé (other)"
PKI_OTHER = "other"
PKI_NONE = "no verified card"
PKIS = (PKI_2TER, PKI_FORT, PKI_STANDARD, PKI_SANTE_OTHER, PKI_OTHER, PKI_NONE)


def pki_of(identity: dict[str, Any] | None, authority: Any = None) -> str:
    """The card PKI, from the issuer DN first (what the card says), then the authority set's name.

    IGC CPS CAs have no CN and ``O=GIP-CPS[-TEST]``; IGC Santé CAs name their range in the CN
    (``AC IGC-SANTE FORT PERSONNES``, ``... STANDARD PERSONNES``), test CAs with a ``TEST`` prefix.
    """
    if identity:
        issuer = str(identity.get("issuer", "")).upper()
        if "GIP-CPS" in issuer or identity.get("layout") == "igc-cps":
            return PKI_2TER
        if "IGC-SANTE" in issuer or identity.get("layout") == "igc-sante":
            if "FORT" in issuer:
                return PKI_FORT
            if "STANDARD" in issuer:
                return PKI_STANDARD
            return PKI_SANTE_OTHER
        authority = identity.get("authority", authority)
    if isinstance(authority, str) and authority:
        name = authority.lower()
        if "2ter" in name or "cps" in name:
            return PKI_2TER
        if "fort" in name:
            return PKI_FORT
        if "standard" in name:
            return PKI_STANDARD
        return PKI_SANTE_OTHER if "sante" in name else PKI_OTHER
    return PKI_OTHER if identity else PKI_NONE


def card_type_of(identity: dict[str, Any] | None) -> str:
    """CPS, CPF, CPE, CPA (productType extension), ``unknown`` for a card without it, ``-`` without a card."""
    if not identity:
        return "-"
    value = identity.get("card_type_name")
    return str(value) if value else "unknown"


def holder_of(identity: dict[str, Any] | None) -> str | None:
    """The holder's IdNat_PS (the card subject's CN), if a card was verified."""
    if not identity:
        return None
    value = identity.get("idnat_ps")
    return str(value) if value else None


def saw_hello(event: dict[str, Any]) -> bool:
    """True when the proxy read a ClientHello: a flow was chosen, or refused for its SNI (or lack of it)."""
    return event.get("flow") is not None or event.get("reason") == "unknown_sni"


def no_sni(event: dict[str, Any]) -> bool:
    """True when the client sent a ClientHello without SNI (a connection closed before it says nothing)."""
    return not event.get("sni") and saw_hello(event)


def address_of(peer: Any) -> str:
    """The client IP of a ``peer`` field (``ip:port``, IPv6 written without brackets)."""
    if not isinstance(peer, str):
        return "?"
    host, sep, port = peer.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else peer
