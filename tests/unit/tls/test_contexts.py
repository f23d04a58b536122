"""Per-flow OpenSSL contexts: TLS policy applied as configured."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from OpenSSL import SSL

from sniproxy.config.model import ClientAuth, Flow, TlsPolicy
from sniproxy.demo.pki import TestPki, build
from sniproxy.errors import ConfigError, Reason
from sniproxy.tls.alerts import install_verify, x509_error_for
from sniproxy.tls.contexts import build_flow_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def _flow(pki: TestPki, **tls: Any) -> Flow:
    srv = pki.servers["igcsante"]
    return Flow(name="f", certificate=srv.chain, key=srv.key, client_auth=ClientAuth.NONE,
                tls=dataclasses.replace(TlsPolicy(), **tls))


def _handshake(server_ctx: SSL.Context, cctx: SSL.Context, *, app_data: object = None,
               client_errors: list[str] | None = None) -> SSL.Connection:
    """Run a handshake in memory between the two contexts; return the server side.

    Raises SSL.Error, unless ``client_errors`` is given: then the client's error is collected there
    (the server's own, for a refusal, is expected).
    """
    server = SSL.Connection(server_ctx, None)
    server.set_app_data(app_data)
    server.set_accept_state()
    client = SSL.Connection(cctx, None)
    client.set_connect_state()
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as exc:
                if client_errors is None:
                    raise
                if a is client:          # the alert the server sent, as the client reports it
                    client_errors.append(str(exc))
                    return server
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    return server


def _negotiated_group(server_ctx: SSL.Context, client_groups: str) -> str:
    """The key-exchange group used with a client offering ``client_groups``."""
    from OpenSSL._util import ffi, lib

    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert lib.SSL_CTX_set1_curves_list(cctx._context, client_groups.encode()) == 1
    server = _handshake(server_ctx, cctx)
    return ffi.string(lib.SSL_get0_group_name(server._ssl)).decode()


def test_groups_are_applied(pki: TestPki) -> None:
    ctx = build_flow_context(_flow(pki, groups="P-384"), ())
    assert _negotiated_group(ctx, "X25519:P-384") in ("secp384r1", "P-384")
    ctx = build_flow_context(_flow(pki, groups="X25519"), ())
    assert _negotiated_group(ctx, "P-384:X25519").lower() == "x25519"


def test_unknown_group_is_a_config_error(pki: TestPki) -> None:
    with pytest.raises(ConfigError, match="groups"):
        build_flow_context(_flow(pki, groups="NOPE-1"), ())


def test_tls_1_1_is_never_negotiated(pki: TestPki) -> None:
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cctx.set_max_proto_version(SSL.TLS1_1_VERSION)
    # Let the client really offer TLS 1.1 (OpenSSL's own level would refuse it): only our policy may.
    cctx.set_cipher_list(b"ALL:@SECLEVEL=0")
    with pytest.raises(SSL.Error):
        _handshake(build_flow_context(_flow(pki), ()), cctx)


def test_tickets_are_off_wherever_cards_are_checked(pki: TestPki) -> None:
    """A resumed session carries no card: a ticket would skip the card checks for its lifetime."""
    carded = dataclasses.replace(_flow(pki, session_tickets=True), client_auth=ClientAuth.REQUIRED)
    assert build_flow_context(carded, ()).set_options(0) & SSL.OP_NO_TICKET
    cardless = _flow(pki, session_tickets=True)
    assert not build_flow_context(cardless, ()).set_options(0) & SSL.OP_NO_TICKET


# -- the alert a refused card gets ---------------------------------------------------------------------
@pytest.mark.parametrize(("reason", "alert"), [(Reason.REVOKED, "certificate revoked"),
                                               (Reason.WRONG_USAGE, "unsupported certificate"),
                                               (Reason.TEST_CHAIN, "bad certificate"),
                                               (Reason.CARD_TYPE, "bad certificate"),
                                               (Reason.CRL_STALE, "unknown ca")])
def test_a_refusal_sends_the_alert_of_its_reason(pki: TestPki, reason: Reason, alert: str) -> None:
    """Without install_verify, OpenSSL sent internal_error for every refusal it had not found itself."""
    server_ctx = build_flow_context(_flow(pki, min_version="1.2"), ())

    class State:
        reason: Reason | None = None

    def refuse(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if depth == 0:
            conn.get_app_data().reason = reason
            return False
        return True

    install_verify(server_ctx, SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, refuse)
    card = pki.cards["cps-2ter"]
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cctx.set_max_proto_version(SSL.TLS1_2_VERSION)     # the alert then comes before the client's Finished
    cctx.use_certificate_chain_file(str(card.chain))
    cctx.use_privatekey_file(str(card.key))
    errors: list[str] = []
    _handshake(server_ctx, cctx, app_data=State(), client_errors=errors)
    assert errors and alert in errors[0].replace("_", " ").lower(), errors


def test_x509_error_for_unknown_reasons_is_bad_certificate() -> None:
    assert x509_error_for(None) == x509_error_for(Reason.TEST_CARD) == 28
    assert x509_error_for(Reason.REVOKED) == 23
