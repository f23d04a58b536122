"""The PROXY v2 header sniproxy writes to a ``proxy-v2`` backend before any other byte (sans-IO).

Owns: which TLVs carry the verified card identity and how they are sized. The client addresses,
``PP2_TYPE_SSL`` (flags, verify result, TLS version, CN, cipher, signature and key algorithms of the
card certificate), ``PP2_TYPE_AUTHORITY`` (the SNI) and, on request, application TLVs with the full
identity. Must not do I/O or read certificates: the card's ``CardFacts`` and identity fields come from
the ``sniproxy.card.CardIdentity`` read once at the end of the handshake (the parsed chain is freed
right after).

Backend facts (docs/domain.md): Dovecot 2.3 keeps the SSL bit and the CN only; Dovecot 2.4 trusts the CN
only with the certificate-present flags and verify = 0; Dovecot 2.3 drops a header over 1500 bytes,
so the certificate itself is never sent and an optional identity TLV is left out when it would
push the header over that size.
"""

from __future__ import annotations

from collections.abc import Mapping

from sniproxy.card import CardFacts
from sniproxy.proto.proxy_encode import authority_tlv, custom_tlv, encode_v2, ssl_tlv
from sniproxy.proto.proxy_wire import (
    MAX_HEADER,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    Address,
    Tlv,
)

#: Application TLVs (0xE0-0xEF, spec 2.2.8) carrying the identity when ``identity_tlvs`` is on.
#: Values are UTF-8; the numbers are part of sniproxy's interface (docs/identity.md).
IDENTITY_TLVS: Mapping[str, int] = {
    "idnat_ps": 0xE0,
    "idnat_struct": 0xE1,
    "subject": 0xE2,
    "issuer": 0xE3,
    "serial": 0xE4,
    "sha256": 0xE5,
    "authority": 0xE6,
    "card_type_name": 0xE7,
}


def proxy_v2_header(*, src: Address, dst: Address, sni: str | None, tls_version: str, cipher: str,
                    card: CardFacts | None, send_cn: bool, identity: Mapping[str, str] | None = None,
                    crc32c: bool = False) -> bytes:
    """The PROXY v2 header for one client, never over ``MAX_HEADER`` (1500) bytes.

    ``card`` is None when no client certificate was presented: then only ``PP2_CLIENT_SSL`` is set,
    and verify is non-zero (spec 2.2.6: 0 means a certificate was presented and verified). With a
    card, both certificate flags are set (one full handshake per connection: the certificate was
    given on this connection and this session) and verify is 0, which Dovecot 2.4 requires before it
    trusts the CN. ``identity`` adds the application TLVs of ``IDENTITY_TLVS``; one that would push the
    header over the size limit is left out (never the address, SSL or authority TLVs).
    Raises ``ValueError`` only if even the minimal header is too big (an absurd SNI or CN).
    """
    flags = PP2_CLIENT_SSL
    verify = 1
    if card is not None:
        flags |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        verify = 0
    ssl = ssl_tlv(client_flags=flags, verify=verify, version=tls_version or None,
                  cn=card.cn if card is not None and send_cn else None, cipher=cipher or None,
                  sig_alg=card.sig_alg if card is not None else None,
                  key_alg=card.key_alg if card is not None else None)
    base: list[Tlv] = [ssl]
    if sni:
        base.append(authority_tlv(sni))
    header = encode_v2(command="PROXY", src=src, dst=dst, tlvs=base, crc32c=crc32c, max_size=MAX_HEADER)
    room = MAX_HEADER - len(header)
    kept = []
    for tlv_type, value in identity_tlvs(identity) if identity else []:
        # In IDENTITY_TLVS order (most useful first); one that does not fit is skipped, not cut.
        if 3 + len(value) <= room:
            kept.append((tlv_type, value))
            room -= 3 + len(value)
    if not kept:
        return header
    return encode_v2(command="PROXY", src=src, dst=dst, tlvs=[*base, *kept], crc32c=crc32c, max_size=MAX_HEADER)


def identity_tlvs(identity: Mapping[str, str]) -> list[Tlv]:
    """The application TLVs for the identity fields present, in ``IDENTITY_TLVS`` order."""
    out = []
    for name, tlv_type in IDENTITY_TLVS.items():
        value = identity.get(name)
        if value:
            out.append(custom_tlv(tlv_type, value.encode("utf-8")))
    return out
