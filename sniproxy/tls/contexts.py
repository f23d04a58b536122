"""Build the OpenSSL server context of one flow.

One OpenSSL context per flow, built once, with that flow's own certificate, verify mode, trust
store and CA-name list. A connection is created directly with its flow's context (the flow is
chosen from the ClientHello before the SSL object exists), so OpenSSL's SNI context switch and
its trap (the verify mode and CA names of the first context staying in force) never happen.
This module reads files; it must not touch sockets or the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL, crypto

from sniproxy.card import read_certs
from sniproxy.config.model import AuthoritySet, ClientAuth, Flow
from sniproxy.config.tlspolicy import apply_policy
from sniproxy.crl.state import RevocationPolicy
from sniproxy.errors import ConfigError
from sniproxy.tls.alerts import install_verify
from sniproxy.tls.verify import AuthorityTrust, FlowRules, compile_authority, verify_callback

# pyOpenSSL exports it at run time but its stubs lack it (SSL_OP_NO_RENEGOTIATION, OpenSSL 1.1.0h+).
_OP_NO_RENEGOTIATION: int = getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000)
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


@dataclass(frozen=True, slots=True)
class FlowRuntime:
    """A flow ready to serve: its OpenSSL context and its authorization rules."""

    flow: Flow
    context: SSL.Context
    rules: FlowRules


def authority_trust(aset: AuthoritySet) -> AuthorityTrust:
    """An enabled authority set's certificates and revocation policy, compiled for verification."""
    roots = [c for p in aset.roots for c in read_certs(p)]
    inter = [c for p in aset.intermediates for c in read_certs(p)]
    return compile_authority(aset.name, aset.test, roots, inter, RevocationPolicy.of(aset))


def _verify_mode(mode: ClientAuth) -> int:
    if mode is ClientAuth.REQUIRED:
        return SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    if mode is ClientAuth.OPTIONAL:
        return SSL.VERIFY_PEER
    return SSL.VERIFY_NONE


def build_flow_context(flow: Flow, authorities: tuple[AuthorityTrust, ...]) -> SSL.Context:
    """The OpenSSL server context of one flow."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[flow.tls.min_version])
    options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | _OP_NO_RENEGOTIATION
    # A resumed session carries no card: never allow it where cards are checked (tickets would
    # skip the verify callback for their whole lifetime).
    if not flow.tls.session_tickets or flow.client_auth is not ClientAuth.NONE:
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)
    for key, problem in apply_policy(ctx, flow.tls):
        # The loader tried the same strings; this only fires if the OpenSSL here differs from check's.
        raise ConfigError(f"flow {flow.name}: {problem}", key=f"flows.{flow.name}.tls.{key}")
    # No session cache: every connection runs a full handshake, so resumption can never skip the
    # card checks that run in the verify callback.
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(b"sniproxy-" + flow.name.encode()[:20])
    # Idle IMAP connections last hours: let OpenSSL free its read/write buffers between records.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    try:
        ctx.use_certificate_chain_file(str(flow.certificate))
        ctx.use_privatekey_file(str(flow.key))
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise ConfigError(f"flow {flow.name}: certificate/key unusable: {exc}", file=str(flow.certificate),
                          key=f"flows.{flow.name}.certificate") from exc
    store = ctx.get_cert_store()
    assert store is not None
    for auth in authorities:
        for cert in (*auth.roots, *auth.intermediates):
            x = crypto.X509.from_cryptography(cert)
            store.add_cert(x)
            if flow.client_auth is not ClientAuth.NONE:
                # OpenSSL sends no CA names unless told; card middleware picks the card from this list.
                ctx.add_client_ca(x)
    install_verify(ctx, _verify_mode(flow.client_auth), verify_callback)
    ctx.set_verify_depth(flow.verify_depth)
    return ctx
