"""The TLS alert a refused card gets: the verify callback, installed so it can say why.

pyOpenSSL's ``Context.set_verify`` wrapper returns 0 for a refusal but leaves the X509 store
error at "ok" when OpenSSL itself found nothing wrong (revoked by our CRL check, test chain, wrong
usage...). OpenSSL then maps "ok" to an ``internal_error`` alert, so a client with a revoked card
was told the server broke. ``install_verify`` does what pyOpenSSL's wrapper does, plus set the
store error from the refusal reason, so OpenSSL sends ``certificate_revoked``, ``unsupported_certificate``,
``bad_certificate`` or ``unknown_ca`` (its own mapping, RFC 8446 §6.2). The reason in the log is
unchanged; only the alert on the wire improves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL, crypto

from sniproxy.errors import Reason

VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]

# X509_V_ERR_* codes (x509_vfy.h): stable across OpenSSL 1.1 and 3.x.
X509_V_OK = 0
_CERT_REVOKED = 23           # -> certificate_revoked
_UNABLE_TO_GET_CRL = 3       # -> unknown_ca (what OpenSSL's own CRL check reports for a missing CRL)
_INVALID_PURPOSE = 26        # -> unsupported_certificate
_CERT_UNTRUSTED = 27         # -> bad_certificate
_CERT_REJECTED = 28          # -> bad_certificate
_UNKNOWN_ISSUER = 20         # -> unknown_ca

#: The X509 error set for a refusal OpenSSL did not itself detect.
X509_ERRORS: dict[Reason, int] = {
    Reason.REVOKED: _CERT_REVOKED,
    Reason.CRL_MISSING: _UNABLE_TO_GET_CRL,
    Reason.CRL_STALE: _UNABLE_TO_GET_CRL,
    Reason.WRONG_USAGE: _INVALID_PURPOSE,
    Reason.UNKNOWN_CA: _UNKNOWN_ISSUER,
    Reason.TEST_CHAIN: _CERT_UNTRUSTED,
    Reason.PRODUCTION_CHAIN: _CERT_UNTRUSTED,
}


def x509_error_for(reason: Reason | None) -> int:
    """The X509 verify error that makes OpenSSL send the alert fitting ``reason``."""
    return X509_ERRORS.get(reason, _CERT_REJECTED) if reason is not None else _CERT_REJECTED


def install_verify(ctx: SSL.Context, mode: int, callback: VerifyCallback) -> None:
    """``ctx.set_verify(mode, callback)``, with the store error set on a refusal (see module doc)."""
    from OpenSSL._util import ffi, lib

    ctx.set_verify(mode, callback)   # pyOpenSSL's own bookkeeping (get_verify_mode...), replaced below

    def wrapper(ok: int, store_ctx: Any) -> int:
        try:
            x509 = lib.X509_STORE_CTX_get_current_cert(store_ctx)
            lib.X509_up_ref(x509)
            cert = crypto.X509._from_raw_x509_ptr(x509)  # type: ignore[attr-defined]
            errno = lib.X509_STORE_CTX_get_error(store_ctx)
            depth = lib.X509_STORE_CTX_get_error_depth(store_ctx)
            ssl = lib.X509_STORE_CTX_get_ex_data(store_ctx, lib.SSL_get_ex_data_X509_STORE_CTX_idx())
            conn = SSL.Connection._reverse_mapping[ssl]  # type: ignore[attr-defined]
            if callback(conn, cert, errno, depth, ok):
                lib.X509_STORE_CTX_set_error(store_ctx, X509_V_OK)
                return 1
            if errno == X509_V_OK:
                state = conn.get_app_data()
                lib.X509_STORE_CTX_set_error(store_ctx, x509_error_for(getattr(state, "reason", None)))
            return 0
        except Exception:  # fail closed: an exception must never escape into OpenSSL
            return 0

    handle = ffi.callback("int (*)(int, X509_STORE_CTX *)", wrapper)
    # OpenSSL holds a bare pointer: the context keeps the callback alive (and frees it with itself).
    ctx._sniproxy_verify = handle  # type: ignore[attr-defined]
    lib.SSL_CTX_set_verify(ctx._context, mode, handle)
