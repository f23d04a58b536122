"""The TLS policy of a flow as OpenSSL applies it, and how it compares with the ANSSI recommendations.

One owner for the parts of the policy pyOpenSSL has no wrapper for (key-exchange groups, signature
algorithms) so that ``sniproxy check`` and the running proxy accept exactly the same strings:
``apply_policy`` sets them on a context, ``policy_problems`` tries them on a throwaway context, and
``policy_weaknesses`` lists what the ANSSI TLS guide would flag (non-ECDHE or non-AEAD suites,
SHA-1 signatures, session tickets, small groups) for ``sniproxy check`` to warn about.
"""

from __future__ import annotations

import ssl

from OpenSSL import SSL

from sniproxy.config.model import TlsPolicy

#: TLS 1.3 suites the ANSSI guide accepts (CCM_8 has a short tag and is left out).
_GOOD_SUITES = frozenset({"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
                          "TLS_AES_128_CCM_SHA256"})
#: Elliptic-curve groups of at least 256 bits (and the hybrid post-quantum groups built on them).
_GOOD_GROUP_PREFIXES = ("x25519", "x448", "p-256", "p-384", "p-521", "prime256v1", "secp256r1", "secp384r1",
                        "secp521r1", "brainpoolp256r1", "brainpoolp384r1", "brainpoolp512r1", "ffdhe3072",
                        "ffdhe4096", "ffdhe6144", "ffdhe8192", "x25519mlkem768", "secp256r1mlkem768",
                        "secp384r1mlkem1024", "mlkem")


def apply_policy(ctx: SSL.Context, policy: TlsPolicy) -> list[tuple[str, str]]:
    """Set the policy's suites, groups and signature algorithms on ``ctx``; returns (key, problem) pairs."""
    from OpenSSL._util import lib

    problems: list[tuple[str, str]] = []
    try:
        ctx.set_cipher_list(policy.ciphers.encode())
    except SSL.Error:
        problems.append(("ciphers", f"OpenSSL selects no cipher from {policy.ciphers!r}"))
    try:
        ctx.set_tls13_ciphersuites(policy.ciphersuites.encode())
    except SSL.Error:
        problems.append(("ciphersuites", f"OpenSSL accepts no TLS 1.3 suite from {policy.ciphersuites!r}"))
    # SSL_CTX_set1_curves_list is the older name of set1_groups_list; both lists fail whole on one bad name.
    if lib.SSL_CTX_set1_curves_list(ctx._context, policy.groups.encode()) != 1:
        problems.append(("groups", f"unsupported key-exchange groups {policy.groups!r}"))
    if lib.SSL_CTX_set1_sigalgs_list(ctx._context, policy.sigalgs.encode()) != 1:
        problems.append(("sigalgs", f"unsupported signature algorithms {policy.sigalgs!r}"))
    return problems


def policy_problems(policy: TlsPolicy) -> list[tuple[str, str]]:
    """What OpenSSL refuses in ``policy`` (config errors), tried on a throwaway context."""
    return apply_policy(SSL.Context(SSL.TLS_SERVER_METHOD), policy)


def policy_weaknesses(policy: TlsPolicy) -> list[tuple[str, str]]:
    """What in ``policy`` is weaker than the default, ANSSI-aligned one (warnings, not errors)."""
    out: list[tuple[str, str]] = []
    try:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        probe.set_ciphers(policy.ciphers)
        weak = [c["name"] for c in probe.get_ciphers()
                if c["protocol"] != "TLSv1.3" and (c["kea"] != "kx-ecdhe" or not c["aead"])]
    except ssl.SSLError:
        weak = []
    if weak:
        out.append(("ciphers", f"suites without ECDHE key exchange or AEAD encryption: {', '.join(weak)}"))
    suites = [s for s in policy.ciphersuites.split(":") if s and s not in _GOOD_SUITES]
    if suites:
        out.append(("ciphersuites", f"TLS 1.3 suites outside the ANSSI list: {', '.join(suites)}"))
    sha1 = [a for a in policy.sigalgs.split(":") if "sha1" in a.lower() or "md5" in a.lower()]
    if sha1:
        out.append(("sigalgs", f"SHA-1/MD5 signature algorithms: {', '.join(sha1)}"))
    small = [g for g in policy.groups.split(":") if g and not g.lower().startswith(_GOOD_GROUP_PREFIXES)]
    if small:
        out.append(("groups", f"groups under 256-bit security strength or unknown: {', '.join(small)}"))
    if policy.session_tickets:
        out.append(("session_tickets", "session tickets on: resumed sessions skip certificate checks and the "
                                       "ticket keys are not rotated (they stay off on flows checking cards)"))
    return out
