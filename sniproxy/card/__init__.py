"""Everything sniproxy knows about a card certificate, in one package (issue 12).

Owns: the GIP-CPS OIDs and the card-type map (``oids``), the DER reader of their values (``der``), DN
reading and every DN text form (``names``), certificate PEM files (``pem``), and the ``CardIdentity`` read
once per handshake from the verified leaf and handed to every consumer: the log event, the PROXY v2
header, the login decision and the HTTP identity headers (``identity``).
Must not: import anything of sniproxy but ``sniproxy.errors`` (config, routing, tls, proto, crl and the
drivers build on it, never the reverse), decide whether a card is accepted (``sniproxy.tls.verify``),
log, or touch sockets.
"""

from sniproxy.card.identity import (
    IDENTITY_FIELDS,
    NO_FACTS,
    CardFacts,
    CardIdentity,
    UnreadableCard,
    card_facts,
    identity_fields,
    parse_identity,
    read_card,
)
from sniproxy.card.names import dn, is_test_issuer, openssl_dn
from sniproxy.card.oids import CARD_TYPES, CardType
from sniproxy.card.pem import load_certs, read_certs, to_pem

__all__ = [
    "CARD_TYPES",
    "IDENTITY_FIELDS",
    "NO_FACTS",
    "CardFacts",
    "CardIdentity",
    "CardType",
    "UnreadableCard",
    "card_facts",
    "dn",
    "identity_fields",
    "is_test_issuer",
    "load_certs",
    "openssl_dn",
    "parse_identity",
    "read_card",
    "read_certs",
    "to_pem",
]
