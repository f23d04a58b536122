"""Offline verification of a card certificate against each flow, for ``sniproxy verify``.

The same decisions as a handshake, without one: OpenSSL builds and verifies the chain with the
flow's trust (``X509StoreContext``), then the flow's rules and the CRLs in force run exactly as in
the verify callback. Differences from a handshake, stated so nobody is surprised: no proof of
possession of the card's key, and the verify depth limit is not applied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from OpenSSL import crypto

from sniproxy.config.model import ClientAuth
from sniproxy.errors import Reason
from sniproxy.tls.contexts import FlowRuntime
from sniproxy.tls.verify import VerifyState, authorize, error_reason


@dataclass(frozen=True, slots=True)
class CardVerdict:
    """The outcome of one card on one flow."""

    flow: str
    accepted: bool
    reason: str
    detail: str
    authority: str | None
    chain: tuple[str, ...]        # subjects, leaf first, as verified
    crl_grace: tuple[str, ...] = ()


def verify_card(runtime: FlowRuntime, leaf: x509.Certificate, untrusted: list[x509.Certificate],
                now: datetime) -> CardVerdict:
    """Verify ``leaf`` (with the ``untrusted`` certificates it came with) as ``runtime``'s flow would."""
    name = runtime.flow.name
    if runtime.flow.client_auth is ClientAuth.NONE:
        return CardVerdict(name, False, "no_client_auth", "this flow asks for no client certificate", None, ())
    rules = runtime.rules
    state = VerifyState(rules)
    store = crypto.X509Store()
    for auth in rules.authorities:
        for cert in (*auth.roots, *auth.intermediates):
            store.add_cert(crypto.X509.from_cryptography(cert))
    store.set_time(now.astimezone(UTC).replace(tzinfo=None))
    ctx = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf),
                                  [crypto.X509.from_cryptography(c) for c in untrusted])
    try:
        verified = [c.to_cryptography() for c in ctx.get_verified_chain()]
    except crypto.X509StoreContextError as exc:
        errno, depth = int(exc.errors[0]), int(exc.errors[1])
        cert = exc.certificate.to_cryptography() if exc.certificate is not None else leaf
        reason = error_reason(state, errno, cert)
        return CardVerdict(name, False, reason.value, f"{exc.errors[2]} (X509_V_ERR {errno}) at depth {depth}",
                           None, ())
    state.chain = dict(enumerate(verified))
    state.called = True
    ok = authorize(state, leaf, now.timestamp())
    subjects = tuple(c.subject.rfc4514_string() for c in verified)
    if ok:
        return CardVerdict(name, True, Reason.OK.value, "", state.authority, subjects, tuple(state.crl_grace))
    reason = state.reason or Reason.BAD_CERTIFICATE
    return CardVerdict(name, False, reason.value, state.detail, state.authority, subjects)
