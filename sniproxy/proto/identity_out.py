"""The PROXY v2 header sniproxy writes to a ``proxy-v2`` backend before any other byte (sans-IO).

Owns: which TLVs carry the verified card identity and how they are sized. The client addresses,
``PP2_TYPE_SSL`` (flags, verify result, TLS version, CN, cipher, signature and key algorithms of the
card certificate), ``PP2_TYPE_AUTHORITY`` (the SNI) and, on request, application TLVs with the full
identity. Must not do I/O or read certificates: ``CardFacts`` is extracted by the caller once the
handshake is done (``card_facts``), because the parsed chain is freed right after.

Backend facts (docs/domain.md): Dovecot 2.3 keeps the SSL bit and the CN only; Dovecot 2.4 trusts the CN
only with the certificate-present flags and verify = 0; Dovecot 2.3 drops a header over 1500 bytes,
so the certificate itself is never sent and an optional identity TLV is left out when it would
push the header over that size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from sniproxy.proto.proxy_protocol import (
    MAX_HEADER,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    Address,
    Tlv,
    authority_tlv,
    custom_tlv,
    encode_v2,
    ssl_tlv,
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


@dataclass(frozen=True, slots=True)
class CardFacts:
    """What the header says about the client certificate, taken from the verified leaf."""

    cn: str | None
    sig_alg: str | None
    key_alg: str | None


def card_facts(leaf: x509.Certificate) -> CardFacts:
    """CN, signature and key algorithm names of a verified card, in HAProxy's spelling where it has one.

    The CN is the first CommonName attribute wherever it sits (card subjects put GN + CN + SN in one
    multi-valued RDN, so it must be read through the RDN model, never a DN string).
    """
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    return CardFacts(cn=cn, sig_alg=_sig_alg(leaf), key_alg=_key_alg(leaf))


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
