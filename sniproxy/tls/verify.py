"""Client-card verification: OpenSSL builds and checks the chain, this module decides and names why.

Owns the per-connection verify state, the mapping from OpenSSL's X509_V_ERR codes to stable
``Reason`` values, and the flow's authorization rules (which authority set, usage, card type,
test vs production). It must not do I/O or logging: the connection driver logs the outcome.

Why a per-depth callback instead of a post-handshake check: a refusal inside the callback makes
OpenSSL abort the handshake with an alert, so a refused card never gets an established TLS session
and the client learns it at the handshake, as with nginx or HAProxy.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto

from sniproxy.card.der import der_octet, int_extension, raw_extension
from sniproxy.card.names import is_test_issuer
from sniproxy.card.oids import CARD_TYPES, OID_CARD_TYPE, OID_CATEGORY, TEST_CARD_BIT, CardType
from sniproxy.config.model import Profile
from sniproxy.crl.index import Revoked
from sniproxy.crl.state import RevocationHolder, RevocationPolicy, check_chain
from sniproxy.errors import Reason

# X509_V_ERR_* codes (openssl/x509_vfy.h), stable across OpenSSL 1.1 to 4.0.
_UNKNOWN_CA_CODES = frozenset({2, 3, 20, 21, 19, 24, 25})
_ERRNO_REASON: dict[int, Reason] = {
    7: Reason.BAD_CERTIFICATE,       # CERT_SIGNATURE_FAILURE
    9: Reason.NOT_YET_VALID,         # CERT_NOT_YET_VALID
    10: Reason.EXPIRED,              # CERT_HAS_EXPIRED
    18: Reason.SELF_SIGNED,          # DEPTH_ZERO_SELF_SIGNED_CERT
    22: Reason.CHAIN_TOO_DEEP,       # CERT_CHAIN_TOO_LONG
    26: Reason.WRONG_USAGE,          # INVALID_PURPOSE (EKU/KU not fit for a TLS client)
    28: Reason.WRONG_USAGE,          # CERT_REJECTED
    66: Reason.WEAK_KEY,             # EE_KEY_TOO_SMALL
    67: Reason.WEAK_KEY,             # CA_KEY_TOO_SMALL
    68: Reason.WEAK_SIGNATURE,       # CA_MD_TOO_WEAK (any certificate's signature digest, not only a CA's)
}
# ANSSI TLS guide: RSA keys of 2048 bits at least, elliptic curves of 256 bits at least, no SHA-1.
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
_WEAK_DIGESTS = frozenset({"md2", "md4", "md5", "sha1"})
# cryptography cannot name these signature algorithms (it raises UnsupportedAlgorithm): named by OID.
_UNNAMED_DIGESTS = {"1.2.840.113549.1.1.2": "md2", "1.2.840.113549.1.1.3": "md4"}   # md2/md4WithRSAEncryption
_DER = Encoding.DER


@dataclass(frozen=True, slots=True)
class AuthorityTrust:
    """One compiled authority set: its CA certificates and their SHA-256 fingerprints."""

    name: str
    test: bool
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    fingerprints: frozenset[bytes]
    revocation: RevocationPolicy = field(default_factory=RevocationPolicy)


@dataclass(frozen=True, slots=True)
class FlowRules:
    """What a flow demands of a card once OpenSSL has verified its chain."""

    flow: str
    profile: Profile
    authorities: tuple[AuthorityTrust, ...]
    card_types: frozenset[CardType]
    refuse_test_cards: bool
    require_cert: bool
    # Shared by every flow of a process: a CRL refresh swaps its view without recompiling contexts.
    revocation: RevocationHolder | None = None


@dataclass(slots=True)
class VerifyState:
    """What the verify callback saw on one connection (set as the SSL connection's app data)."""

    rules: FlowRules
    chain: dict[int, x509.Certificate] = field(default_factory=dict)
    reason: Reason | None = None
    detail: str = ""
    authority: str | None = None
    called: bool = False
    revoked: Revoked | None = None
    crl_grace: list[str] = field(default_factory=list)

    def refuse(self, reason: Reason, detail: str) -> bool:
        """Record the first refusal (later depths must not overwrite the root cause)."""
        if self.reason is None:
            self.reason = reason
            self.detail = detail
        return False


def _x509_error(errno: int, depth: int) -> str:
    """OpenSSL's own words for a verify error, for the log (``X509_verify_cert_error_string``)."""
    try:
        from OpenSSL._util import ffi, lib  # pyOpenSSL exposes no public wrapper for this string

        text = ffi.string(lib.X509_verify_cert_error_string(errno)).decode()
    except Exception:
        text = "verify error"
    return f"{text} (X509_V_ERR {errno}) at depth {depth}"


def _fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(_DER)).digest()



def compile_authority(name: str, test: bool, roots: list[x509.Certificate],
                      intermediates: list[x509.Certificate],
                      revocation: RevocationPolicy | None = None) -> AuthorityTrust:
    """Build the runtime form of an authority set."""
    fps = frozenset(_fingerprint(c) for c in (*roots, *intermediates))
    return AuthorityTrust(name, test, tuple(roots), tuple(intermediates), fps, revocation or RevocationPolicy())


def _unknown_ca_reason(state: VerifyState, cert: x509.Certificate) -> Reason:
    """Tell a foreign chain from a test chain on production (or the reverse on a test platform)."""
    issuer_is_test = is_test_issuer(cert.issuer)
    if state.rules.profile is Profile.PRODUCTION and issuer_is_test:
        return Reason.TEST_CHAIN
    if state.rules.profile is Profile.TEST and not issuer_is_test:
        return Reason.PRODUCTION_CHAIN
    return Reason.UNKNOWN_CA


def error_reason(state: VerifyState, errno: int, cert: x509.Certificate) -> Reason:
    """The stable reason for an OpenSSL verify error on ``cert``."""
    if errno in _UNKNOWN_CA_CODES:
        return _unknown_ca_reason(state, cert)
    return _ERRNO_REASON.get(errno, Reason.BAD_CERTIFICATE)


def weak_crypto(chain: dict[int, x509.Certificate]) -> tuple[Reason, str] | None:
    """The first weakness of a verified chain (depth -> certificate), or None when it is strong enough.

    OpenSSL's security level already refuses most of these (X509_V_ERR 66-68), but only at level 1 and
    above, and ``sniproxy verify`` builds chains with no level at all: this check holds whatever the
    level. The top certificate's own signature is not judged: a trust anchor is trusted by
    configuration, not by its self-signature (as OpenSSL does).
    """
    top = max(chain, default=0)
    for depth in sorted(chain):
        cert = chain[depth]
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey) and key.key_size < MIN_RSA_BITS:
            return Reason.WEAK_KEY, f"{key.key_size}-bit {_key_kind(key)} key at depth {depth}"
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < MIN_EC_BITS:
            return Reason.WEAK_KEY, f"{key.curve.key_size}-bit EC key ({key.curve.name}) at depth {depth}"
        if depth == top and cert.issuer == cert.subject:
            continue
        try:
            digest = cert.signature_hash_algorithm
            name = digest.name if digest is not None else ""
        except UnsupportedAlgorithm:  # MD2/MD4, or a digest that is none of the weak ones
            name = _UNNAMED_DIGESTS.get(cert.signature_algorithm_oid.dotted_string, "")
        if name in _WEAK_DIGESTS:
            return Reason.WEAK_SIGNATURE, f"{name.upper()} signature at depth {depth}"
    return None


def _key_kind(key: rsa.RSAPublicKey | dsa.DSAPublicKey) -> str:
    return "RSA" if isinstance(key, rsa.RSAPublicKey) else "DSA"


def _anchor(state: VerifyState) -> AuthorityTrust | None:
    """The flow's authority set of the nearest CA of the verified chain that belongs to one."""
    authority = None
    # Nearest CA first: a root shared by two sets must not hide which intermediate issued the card.
    for depth in sorted(d for d in state.chain if d > 0):
        fp = _fingerprint(state.chain[depth])
        authority = next((a for a in state.rules.authorities if fp in a.fingerprints), None)
        if authority is not None:
            break
    return authority


def _usage_ok(state: VerifyState, leaf: x509.Certificate) -> bool:
    """False (the reason recorded) unless the card is fit for TLS client authentication."""
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
            return state.refuse(Reason.WRONG_USAGE, "extended key usage lacks clientAuth")
    except x509.ExtensionNotFound:
        return state.refuse(Reason.WRONG_USAGE, "no extended key usage extension")
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            return state.refuse(Reason.WRONG_USAGE, "key usage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    return True


def _card_ok(state: VerifyState, leaf: x509.Certificate) -> bool:
    """False (the reason recorded) for a test card where refused, or a card type the flow does not accept."""
    rules = state.rules
    if rules.refuse_test_cards:
        raw = raw_extension(leaf, OID_CATEGORY)
        if raw is not None:
            category = der_octet(raw)
            # Present but unreadable: fail closed, it could be a test card.
            if category is None:
                return state.refuse(Reason.TEST_CARD, "unreadable product category extension")
            if category & TEST_CARD_BIT:
                return state.refuse(Reason.TEST_CARD, f"product category 0x{category:02x} is a test card")
    if rules.card_types:
        code = int_extension(leaf, OID_CARD_TYPE)
        card_type: CardType | None = CARD_TYPES.get(code) if code is not None else None
        if card_type not in rules.card_types:
            return state.refuse(Reason.CARD_TYPE, f"card type {card_type or code} not accepted by this flow")
    return True


def _revocation_ok(state: VerifyState, authority: AuthorityTrust, now: float | None) -> bool:
    """False (the reason recorded) when the CRLs in force revoke the chain or cannot vouch for it."""
    rules = state.rules
    if rules.revocation is not None and authority.revocation.required:
        chain = [state.chain[d] for d in sorted(state.chain)]
        verdict = check_chain(rules.revocation.current, authority.revocation, chain,
                              time.time() if now is None else now)
        state.crl_grace = verdict.grace_issuers
        if verdict.reason is not None:
            state.revoked = verdict.revoked
            return state.refuse(verdict.reason, verdict.detail)
    return True


def authorize(state: VerifyState, leaf: x509.Certificate, now: float | None = None) -> bool:
    """Apply the flow's rules to a chain OpenSSL has accepted. Returns False (and records why) to refuse.

    ``now`` (POSIX seconds, default the current time) is the clock for CRL freshness.
    """
    rules = state.rules
    # Before any rule about the card's content: a forgeable chain says nothing reliable about its holder.
    weak = weak_crypto(state.chain or {0: leaf})
    if weak is not None:
        return state.refuse(*weak)
    authority = _anchor(state)
    if authority is None:
        # The store holds only this flow's sets, so this means a trust material mix-up: refuse.
        return state.refuse(Reason.UNKNOWN_CA, "chain anchors in no authority set of this flow")
    state.authority = authority.name
    if authority.test and rules.profile is Profile.PRODUCTION:
        return state.refuse(Reason.TEST_CHAIN, f"authority {authority.name} is a test chain")
    if not authority.test and rules.profile is Profile.TEST:
        return state.refuse(Reason.PRODUCTION_CHAIN, f"authority {authority.name} is production")
    return _usage_ok(state, leaf) and _card_ok(state, leaf) and _revocation_ok(state, authority, now)


def verify_callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's per-depth callback, called from the highest depth down to the leaf.

    Must never raise: an exception here would surface as an unrelated handshake error.
    """
    state = conn.get_app_data()
    if not isinstance(state, VerifyState):
        return False
    state.called = True
    try:
        c = cert.to_cryptography()
        state.chain[depth] = c
        if not ok:
            return state.refuse(error_reason(state, errno, c), _x509_error(errno, depth))
        if depth == 0:
            return authorize(state, c)
        return True
    except Exception as exc:  # fail closed on anything unexpected in a client-supplied certificate
        return state.refuse(Reason.BAD_CERTIFICATE, f"{type(exc).__name__} at depth {depth}")
