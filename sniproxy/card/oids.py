"""The GIP-CPS private extensions of card certificates and what their codes mean.

Owns the object identifiers (1.2.250.1.71.1.2.x, and the UPN otherName) and the card-type map
(productType code -> ``CardType``). Every module that reads or checks a card takes them from here.
Must not: read certificates or decide anything (``sniproxy.card.identity`` reads, ``sniproxy.tls.verify``
decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from cryptography import x509

OID_CARD_TYPE = x509.ObjectIdentifier("1.2.250.1.71.1.2.2")      # productType: a DER INTEGER code
OID_CARD_SERIAL = x509.ObjectIdentifier("1.2.250.1.71.1.2.3")    # the card's own serial number (text)
OID_CATEGORY = x509.ObjectIdentifier("1.2.250.1.71.1.2.5")       # one byte; bit 0x80 marks a test card
OID_PROFESSION = x509.ObjectIdentifier("1.2.250.1.71.1.2.7")     # profession code (DER INTEGER)
OID_UPN = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")        # Microsoft UPN otherName of the SAN

#: The test-card bit of the product category (1.2.250.1.71.1.2.5).
TEST_CARD_BIT = 0x80


class CardType(StrEnum):
    """Card families, read from the GIP-CPS productType extension (1.2.250.1.71.1.2.2)."""

    CPS = "CPS"   # 0
    CPF = "CPF"   # 1
    CPE = "CPE"   # 2 (CPE and CDE share the code)
    CPA = "CPA"   # 3 (CPA and CDA share the code)


#: productType code -> card family; a code not listed is a card type no flow can accept.
CARD_TYPES: Mapping[int, CardType] = MappingProxyType(
    {0: CardType.CPS, 1: CardType.CPF, 2: CardType.CPE, 3: CardType.CPA})
