"""One server-side TLS session over memory BIOs (pyOpenSSL), with no socket and no event loop.

The connection driver feeds it ciphertext and takes back ciphertext to send; plaintext goes in
and out through ``write`` and ``read``. Failures become ``TlsFailure`` carrying a stable reason.
See docs/decisions/0001-tls-engine.md for why pyOpenSSL over memory BIOs.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from sniproxy.errors import Reason, SniproxyError
from sniproxy.tls.contexts import FlowRuntime
from sniproxy.tls.verify import VerifyState

_CHUNK = 65536
_RECORD = 16384
# A memory BIO keeps the largest buffer it ever needed (OpenSSL's BUF_MEM only grows): a chunk of more
# than this many bytes through either BIO marks the session ``grown``, for ``release_buffers``.
GROWN_AT = 4096
# What ``grown`` says: nothing to release; a big chunk went through; the driver has scheduled the release.
SMALL, GROWN, RELEASE_DUE = 0, 1, 2


class TlsFailure(SniproxyError):
    """The TLS session cannot go on; ``reason`` says why in the project's stable vocabulary."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _ssl_error_text(exc: SSL.Error) -> str:
    """OpenSSL's error queue as one short line (the reason strings, not the library codes)."""
    parts = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(str(item[2]))
    return "; ".join(parts) or type(exc).__name__


class TlsSession:
    """The server side of one TLS connection, created with its flow's context."""

    __slots__ = ("_conn", "established", "flow", "grown", "state")

    def __init__(self, runtime: FlowRuntime) -> None:
        self.flow = runtime
        self.state = VerifyState(runtime.rules)
        conn = SSL.Connection(runtime.context, None)
        conn.set_app_data(self.state)
        conn.set_accept_state()
        self._conn = conn
        self.established = False
        self.grown = SMALL

    def _failure(self, exc: SSL.Error) -> TlsFailure:
        text = _ssl_error_text(exc)
        if self.state.reason is not None:
            return TlsFailure(self.state.reason, self.state.detail or text)
        if "peer did not return a certificate" in text or "certificate required" in text:
            return TlsFailure(Reason.NO_CLIENT_CERT, text)
        return TlsFailure(Reason.HANDSHAKE_FAILED, text)

    def feed(self, data: bytes) -> None:
        """Give the session ciphertext received from the client."""
        if len(data) > GROWN_AT and not self.grown:
            self.grown = GROWN
        self._conn.bio_write(data)

    def outgoing(self) -> bytes:
        """Take every byte of ciphertext the session wants sent to the client."""
        conn: Any = self._conn
        # Ask the BIO how much it holds: one read of exactly that, and no WantReadError (an exception
        # per call, and a 64 KiB buffer per ``bio_read``) when it holds nothing, as after most reads.
        pending = _lib.BIO_get_mem_data(conn._from_ssl, _ffi.NULL)
        if pending <= 0:
            return b""
        data: bytes = conn.bio_read(pending)
        if len(data) > GROWN_AT and not self.grown:
            self.grown = GROWN
        return data

    def release_buffers(self) -> None:
        """Swap each empty memory BIO for a new one, freeing the buffer the old one kept.

        A memory BIO never gives back the largest buffer it needed: after the handshake's flights
        (about 7 KiB for both) or one 256 KiB read relayed, an IMAP connection would keep that for
        its hours of IDLE. A BIO still holding bytes is kept. ``SSL_set_bio`` frees the BIO it
        replaces; pyOpenSSL's memory-BIO methods read ``_into_ssl``/``_from_ssl``, hence the
        private names (tests/unit/tls/test_session.py fails if a pyOpenSSL upgrade renames them).
        """
        self.grown = SMALL
        conn: Any = self._conn      # the private names are not in pyOpenSSL's type stubs
        ssl = getattr(conn, "_ssl", None)
        into, from_ = getattr(conn, "_into_ssl", None), getattr(conn, "_from_ssl", None)
        if ssl is None or into is None or from_ is None:
            return
        if _lib.BIO_get_mem_data(into, _ffi.NULL) == 0:
            bio = _lib.BIO_new(_lib.BIO_s_mem())
            if bio != _ffi.NULL:
                _lib.SSL_set_bio(ssl, bio, from_)     # replaces (and frees) the read BIO only
                conn._into_ssl = into = bio
        if _lib.BIO_get_mem_data(from_, _ffi.NULL) == 0:
            bio = _lib.BIO_new(_lib.BIO_s_mem())
            if bio != _ffi.NULL:
                _lib.SSL_set_bio(ssl, into, bio)      # replaces (and frees) the write BIO only
                conn._from_ssl = bio

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete. Raises ``TlsFailure``."""
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise self._failure(exc) from None
        self.established = True
        return True

    def read(self) -> tuple[bytes, bool]:
        """Decrypt what has been fed: (plaintext, the client sent close_notify). Raises ``TlsFailure``."""
        conn: Any = self._conn
        out = []
        while True:
            try:
                out.append(conn.recv(_CHUNK))
            except SSL.WantReadError:
                return b"".join(out), False
            except SSL.ZeroReturnError:
                return b"".join(out), True
            except SSL.Error as exc:
                raise self._failure(exc) from None
            # Nothing left in the BIO and no plaintext held: another recv would only raise WantReadError.
            if not _lib.BIO_get_mem_data(conn._into_ssl, _ffi.NULL) and not conn.pending():
                return out[0] if len(out) == 1 else b"".join(out), False

    def write(self, data: bytes) -> None:
        """Encrypt plaintext for the client (take it back with ``outgoing``). Raises ``TlsFailure``."""
        view = memoryview(data)
        try:
            while view:
                n = self._conn.send(view[:_RECORD])
                view = view[n:]
        except SSL.Error as exc:
            raise self._failure(exc) from None

    def close_notify(self) -> None:
        """Queue a close_notify alert; errors are ignored since the connection is ending anyway."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass

    @property
    def leaf(self) -> x509.Certificate | None:
        """The verified client certificate, if any."""
        return self.state.chain.get(0) if self.state.called else None

    @property
    def version(self) -> str:
        """Negotiated protocol version, e.g. ``TLSv1.3``."""
        return self._conn.get_protocol_version_name()

    @property
    def cipher(self) -> str:
        """Negotiated cipher suite name."""
        return self._conn.get_cipher_name() or ""

    @property
    def cipher_bits(self) -> int | None:
        """Secret key bits of the negotiated cipher (Tomcat's ``ssl_cipher_usekeysize``)."""
        return self._conn.get_cipher_bits()

    @property
    def session_id(self) -> str:
        """A per-connection identifier for Tomcat's ``ssl_session_id``: the server random, hex.

        Sessions are never resumed here (cache off, no tickets), so there is no session id worth
        the name; the cryptography binding pyOpenSSL ships has no ``SSL_SESSION_get_id`` either.
        """
        rnd = self._conn.server_random()
        return rnd.hex() if rnd else ""

    def verified_chain_der(self) -> list[bytes]:
        """The verified chain, leaf first and trust anchor last, as DER; empty without a card.

        The verified chain rather than what the client sent: a server-side ``get_peer_cert_chain``
        leaves the leaf out, and what the client sent may hold certificates that played no part.
        """
        from OpenSSL import crypto

        chain = self._conn.get_verified_chain() or []
        return [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain]
