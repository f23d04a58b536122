"""What one idle server-side TLS session holds in the C heap, part by part (OpenSSL of the cryptography wheel).

N ``TlsSession`` objects of the demo's flow ``2bis`` (card required) through a TLS 1.3 handshake with a
pyOpenSSL client over memory BIOs, the clients dropped, then glibc ``mallinfo2`` (in use) per session,
for one variant:

- ``bare``: ``SSL.Connection(ctx, None)`` only, no handshake;
- ``nocard``: the same flow with ``client_auth: none`` (no card);
- ``leaf``: the card without its intermediate (the client sends the leaf only);
- ``card``: the card with its intermediate, as the fixtures and real cards send it;
- ``+clear``: the Python-parsed chain of the verify state freed (the driver does it after the handshake);
- ``+swap``: ``release_buffers()`` (fresh memory BIOs, the driver does it after the handshake);
- ``+distinct``: each client presents its own re-issue of the card (new serial, same key and intermediate).

    PYTHONPATH=. python bench/idle_tls_parts.py card+clear+swap --conns 500
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from OpenSSL import SSL

from bench.idle_breakdown import c_heap
from sniproxy.demo.conf import config_dict
from sniproxy.demo.pki import build
from sniproxy.observability.log import configure
from sniproxy.tls.session import TlsSession
from tests.unit.driver.kit import PORTS, TlsClient, mail_config, snapshot


def reissued(pki: Any) -> SSL.Context:
    """A client context with a new issue of the ``fort`` card (new serial), and its intermediate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from OpenSSL import crypto

    leaf = x509.load_pem_x509_certificate(pki.cards["fort"].cert.read_bytes())
    auth = pki.authorities["igc-sante-fort-pp"]
    ca_key = serialization.load_pem_private_key(auth.intermediate_keys[0].read_bytes(), None)
    b = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
         .public_key(leaf.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
    for ext in leaf.extensions:
        b = b.add_extension(ext.value, ext.critical)
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate(crypto.X509.from_cryptography(b.sign(ca_key, hashes.SHA256())))  # type: ignore[arg-type]
    ctx.add_extra_chain_cert(crypto.X509.from_cryptography(
        x509.load_pem_x509_certificate(auth.intermediates[0].read_bytes())))
    ctx.use_privatekey_file(str(pki.cards["fort"].key))
    return ctx


def session(variant: str, pki: Any, snap: Any, snap_none: Any) -> object:
    if variant.startswith("bare"):
        return SSL.Connection(snap.flows["2bis"].context, None)
    server = TlsSession((snap_none if variant.startswith("nocard") else snap).flows["2bis"])
    client = TlsClient(pki, sni=None)
    if "+distinct" in variant:
        client.ssl = SSL.Connection(reissued(pki), None)
        client.ssl.set_connect_state()
    elif not variant.startswith("card"):
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if variant.startswith("leaf"):
            ctx.use_certificate_file(str(pki.cards["fort"].cert))
            ctx.use_privatekey_file(str(pki.cards["fort"].key))
        client.ssl = SSL.Connection(ctx, None)
        client.ssl.set_connect_state()
    client.handshake_session(server)
    assert server.established
    server.read()
    if "+clear" in variant:
        server.state.chain.clear()
    if "+swap" in variant:
        server.release_buffers()
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", help="bare | nocard | leaf | card, then +clear and/or +swap")
    ap.add_argument("--conns", type=int, default=500)
    args = ap.parse_args()
    configure("error")
    tmp = Path(tempfile.mkdtemp(prefix="idle-tls-parts-"))
    pki = build(tmp / "pki")
    snap = snapshot(mail_config(pki), tmp)
    snap_none = snapshot(config_dict(pki, PORTS, client_auth="none"), tmp)
    warm = [session(args.variant, pki, snap, snap_none) for _ in range(20)]
    del warm
    gc.collect()
    h0 = c_heap()
    keep = [session(args.variant, pki, snap, snap_none) for _ in range(args.conns)]
    gc.collect()
    print(f"{args.variant}: {(c_heap() - h0) / len(keep) / 1024:.2f} KiB C heap per session ({len(keep)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
