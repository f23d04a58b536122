"""One server-side TLS session over memory BIOs (pyOpenSSL), with no socket and no event loop.

The connection driver feeds it ciphertext and takes back ciphertext to send; plaintext goes in
and out through ``write`` and ``read``. Failures become ``TlsFailure`` carrying a stable reason.
See docs/decisions/0001-tls-engine.md for why pyOpenSSL over memory BIOs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from OpenSSL._util import no_zero_allocator as _no_zero_allocator

from sniproxy.errors import Reason, SniproxyError
from sniproxy.tls.contexts import FlowRuntime
from sniproxy.tls.verify import VerifyState

# A memory BIO keeps the largest buffer it ever needed (OpenSSL's BUF_MEM only grows): a chunk of more
# than this many bytes through either BIO marks the session ``grown``, for ``release_buffers``.
GROWN_AT = 4096
# What ``grown`` says: nothing to release; a big chunk went through; the driver has scheduled the release.
SMALL, GROWN, RELEASE_DUE = 0, 1, 2

# The record path calls OpenSSL through the binding pyOpenSSL itself uses (``_lib``), not through
# ``SSL.Connection``'s methods: those allocate a fresh C buffer per call (64 KiB per ``recv``), copy
# it into bytes, check errors in Python even on success, and every attribute of a Connection goes
# through its ``__getattr__`` hook. Module globals: one dictionary lookup fewer per call.
_SSL_read = _lib.SSL_read
_SSL_write = _lib.SSL_write
_SSL_get_error = _lib.SSL_get_error
_BIO_read = _lib.BIO_read
_BIO_write = _lib.BIO_write
_BIO_pending = _lib.BIO_get_mem_data
_BIO_new_mem_buf = _lib.BIO_new_mem_buf
_BIO_set_mem_eof_return = _lib.BIO_set_mem_eof_return
_BIO_new = _lib.BIO_new
_BIO_s_mem = _lib.BIO_s_mem
_SSL_set_bio = _lib.SSL_set_bio
_unpack: Callable[[Any, int], bytes] = _ffi.unpack
_NULL = _ffi.NULL
_WANT_READ = _lib.SSL_ERROR_WANT_READ
_ZERO_RETURN = _lib.SSL_ERROR_ZERO_RETURN
# The most plaintext one record carries (RFC 8446 §5.1): one SSL_read never returns more.
_RECORD = 16384
# Plaintext writes above this size take encrypt()'s one-copy path (the ciphertext is then > GROWN_AT too).
_BIG_WRITE = 16384
# One scratch buffer for every session of the worker: plaintext is decrypted into it and ciphertext
# taken out of the memory BIO into it, then copied out as bytes before the call returns, so no two
# uses overlap (one event loop, one thread). Big enough for what uvloop reads at once (256,000 bytes)
# plus a record, so a bulk read is one copy out. Not zeroed: its pages cost memory only once used.
_SCRATCH_SIZE = 262144 + 2 * _RECORD
_SCRATCH = _no_zero_allocator("char[]", _SCRATCH_SIZE)
# The worker-wide inbox: uvloop reads the client's bytes straight into it (``ClientConnection.get_buffer``, a
# ``BufferedProtocol``: no bytes object per read), and they are consumed before ``buffer_updated`` returns
# (fed to OpenSSL, or copied out as bytes), so one serves every connection of the worker, as the scratch buffer
# does. 256 KiB: what uvloop reads at once otherwise. ``INBOX`` is the writable buffer the transport gets.
INBOX_SIZE = 262144
_INBOX = _no_zero_allocator("char[]", INBOX_SIZE)
INBOX: Any = _ffi.buffer(_INBOX)
# Reads of more ciphertext than this take ``read_inbox``'s bulk path (a read-only BIO over the inbox, and for a
# raw relay the plaintext in a buffer of its own); smaller ones (ping-pong, mail) are copied into the memory BIO.
_BIG_READ = 2 * _RECORD
# Room for the plaintext of one bulk read: at most its ciphertext plus the rest of a record OpenSSL kept from the
# previous read (16 KiB + 256 at most, RFC 8446 §5.2), with room for one more whole record on every SSL_read.
_BULK_SLACK = 3 * _RECORD


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

    # _ssl, _in, _out: the Connection's SSL object and its two memory BIOs (pyOpenSSL's private
    # ``_ssl``, ``_into_ssl``, ``_from_ssl``; tests/unit/tls/test_session.py fails if an upgrade renames them).
    # views: the plaintext of a bulk read may come as a memoryview (``read_inbox``): set by the front for raw relays.
    __slots__ = ("_conn", "_in", "_out", "_ssl", "established", "flow", "grown", "state", "views")

    def __init__(self, runtime: FlowRuntime) -> None:
        self.flow = runtime
        self.state = VerifyState(runtime.rules)
        conn = SSL.Connection(runtime.context, None)
        conn.set_app_data(self.state)
        conn.set_accept_state()
        self._conn = conn
        raw: Any = conn     # the private names are not in pyOpenSSL's type stubs
        self._ssl, self._in, self._out = raw._ssl, raw._into_ssl, raw._from_ssl
        # pyOpenSSL turns partial writes on (one record per SSL_write); over a memory BIO, which grows
        # and never says WANT_WRITE, one SSL_write can take the whole of a write.
        _lib.SSL_clear_mode(self._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        self.established = False
        self.grown = SMALL
        self.views = False

    def _failure(self, exc: SSL.Error) -> TlsFailure:
        text = _ssl_error_text(exc)
        if self.state.reason is not None:
            return TlsFailure(self.state.reason, self.state.detail or text)
        if "peer did not return a certificate" in text or "certificate required" in text:
            return TlsFailure(Reason.NO_CLIENT_CERT, text)
        return TlsFailure(Reason.HANDSHAKE_FAILED, text)

    def _call_failed(self, result: int) -> TlsFailure:
        """The failure of an ``SSL_read``/``SSL_write`` that returned ``result``, as pyOpenSSL words it."""
        conn: Any = self._conn
        try:
            conn._raise_ssl_error(self._ssl, result)     # reads (and empties) OpenSSL's error queue
        except SSL.Error as exc:
            return self._failure(exc)
        return TlsFailure(Reason.HANDSHAKE_FAILED, f"OpenSSL call returned {result}")

    def feed(self, data: bytes) -> None:
        """Give the session ciphertext received from the client."""
        n = len(data)
        if n > GROWN_AT and not self.grown:
            self.grown = GROWN
        # A memory BIO write fails only when it cannot grow (out of memory).
        if n and _BIO_write(self._in, data if type(data) is bytes else _ffi.from_buffer(data), n) != n:
            raise TlsFailure(Reason.INTERNAL_ERROR, "memory BIO write failed")

    def outgoing(self) -> bytes:
        """Take every byte of ciphertext the session wants sent to the client."""
        # One BIO_read into the scratch buffer: -1 (nothing) after most reads, everything after most writes.
        n = _BIO_read(self._out, _SCRATCH, _SCRATCH_SIZE)
        if n <= 0:
            return b""
        if n > GROWN_AT and not self.grown:
            self.grown = GROWN
        return _unpack(_SCRATCH, n) if n < _SCRATCH_SIZE else self._more_out(n)

    def _more_out(self, n: int) -> bytes:
        """The scratch buffer holds ``n`` bytes and filled up: those, then the rest of the BIO."""
        out = [_unpack(_SCRATCH, n)]
        while (n := _BIO_read(self._out, _SCRATCH, _SCRATCH_SIZE)) > 0:
            out.append(_unpack(_SCRATCH, n))
        return b"".join(out)

    def release_buffers(self) -> None:
        """Swap each empty memory BIO for a new one, freeing the buffer the old one kept.

        A memory BIO never gives back the largest buffer it needed: after the handshake's flights
        (about 7 KiB for both) or one 256 KiB read relayed, an IMAP connection would keep that for
        its hours of IDLE. A BIO still holding bytes is kept. ``SSL_set_bio`` frees the BIO it
        replaces; pyOpenSSL's memory-BIO methods read ``_into_ssl``/``_from_ssl``, so they are
        updated too.
        """
        self.grown = SMALL
        conn: Any = self._conn
        ssl, into, from_ = self._ssl, self._in, self._out
        if _BIO_pending(into, _NULL) == 0:
            bio = _BIO_new(_BIO_s_mem())
            if bio != _NULL:
                _SSL_set_bio(ssl, bio, from_)         # replaces (and frees) the read BIO only
                self._set_in(bio)
                into = bio
        if _BIO_pending(from_, _NULL) == 0:
            bio = _BIO_new(_BIO_s_mem())
            if bio != _NULL:
                _SSL_set_bio(ssl, into, bio)          # replaces (and frees) the write BIO only
                conn._from_ssl = self._out = bio

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

    def read(self, data: bytes = b"") -> tuple[bytes, bool]:
        """Feed ``data`` (ciphertext from the client, if any) and decrypt all that has been fed.

        Returns (plaintext, the client sent close_notify); raises ``TlsFailure``. Every ``SSL_read``
        is given room for a whole record (``_RECORD``), so OpenSSL never keeps plaintext back (no
        ``SSL_pending`` to ask) and all is read once the BIO is empty.
        """
        if data:
            n = len(data)
            if n > GROWN_AT and not self.grown:
                self.grown = GROWN
            if _BIO_write(self._in, data if type(data) is bytes else _ffi.from_buffer(data), n) != n:
                raise TlsFailure(Reason.INTERNAL_ERROR, "memory BIO write failed")
        ssl = self._ssl
        n = _SSL_read(ssl, _SCRATCH, _SCRATCH_SIZE)
        # The common case, one whole record fed: its plaintext read and nothing left in the BIO.
        if n > 0 and not _BIO_pending(self._in, _NULL):
            return _unpack(_SCRATCH, n), False
        chunks: list[bytes] = []
        off = 0
        while n > 0:         # several records: read until OpenSSL wants more bytes
            off += n
            if _SCRATCH_SIZE - off < _RECORD:
                chunks.append(_unpack(_SCRATCH, off))
                off = 0
            n = _SSL_read(ssl, _SCRATCH + off, _SCRATCH_SIZE - off)
        err = _SSL_get_error(ssl, n)
        if err != _WANT_READ and err != _ZERO_RETURN:
            raise self._call_failed(n)
        if off or chunks:
            chunks.append(_unpack(_SCRATCH, off))
        return b"".join(chunks) if len(chunks) != 1 else chunks[0], err == _ZERO_RETURN

    def read_inbox(self, n: int) -> tuple[bytes | memoryview, bool]:
        """``read`` of the ``n`` bytes of ciphertext uvloop read into ``INBOX``; they are consumed on return.

        A bulk read is not copied into the memory BIO: OpenSSL reads its records from a read-only BIO over
        the inbox, swapped in for this call and out again (with any byte it left, copied) before returning,
        so the inbox is never read again after this call. With ``views`` (a raw relay, whose backend
        transport takes any buffer) the plaintext goes to a buffer made for this read and comes back as a
        memoryview of it: the transport may keep it while unsent, nothing else ever writes to it.
        """
        if n <= _BIG_READ or _BIO_pending(self._in, _NULL):
            if n > GROWN_AT and not self.grown:
                self.grown = GROWN
            if _BIO_write(self._in, _INBOX, n) != n:
                raise TlsFailure(Reason.INTERNAL_ERROR, "memory BIO write failed")
            return self.read()
        ssl, out = self._ssl, self._out
        # Both BIOs are made before anything changes: a failure here leaves the session as it was.
        inbox = _BIO_new_mem_buf(_INBOX, n)
        mem = _BIO_new(_BIO_s_mem()) if inbox != _NULL else _NULL
        if mem == _NULL:
            if inbox != _NULL:
                _lib.BIO_free(inbox)
            raise TlsFailure(Reason.INTERNAL_ERROR, "memory BIO allocation failed")
        _BIO_set_mem_eof_return(inbox, -1)     # its end means "more to come", not end of stream
        _SSL_set_bio(ssl, inbox, out)          # frees the (empty) memory BIO
        self._set_in(inbox)
        try:
            return self._bulk_views(n) if self.views else self.read()
        finally:
            rest = _BIO_pending(inbox, _NULL)  # OpenSSL takes partial records into its own buffer: 0 but
            if rest > 0:                       # after a close_notify or a failure
                _BIO_write(mem, _INBOX + (n - rest), rest)
            _SSL_set_bio(ssl, mem, out)        # frees the read-only BIO: nothing points into the inbox now
            self._set_in(mem)

    def _set_in(self, bio: Any) -> None:
        """The SSL's read BIO is now ``bio`` (pyOpenSSL's memory-BIO methods read ``_into_ssl``)."""
        conn: Any = self._conn
        conn._into_ssl = self._in = bio

    def _bulk_views(self, n: int) -> tuple[bytes | memoryview, bool]:
        """Decrypt what the read BIO holds into a buffer of its own; its plaintext as a memoryview."""
        ssl = self._ssl
        size = n + _BULK_SLACK
        buf = _no_zero_allocator("char[]", size)
        off = 0
        while (got := _SSL_read(ssl, buf + off, size - off)) > 0:
            off += got
        err = _SSL_get_error(ssl, got)
        if err != _WANT_READ and err != _ZERO_RETURN:
            raise self._call_failed(got)
        return (memoryview(_ffi.buffer(buf, off)) if off else b""), err == _ZERO_RETURN

    def write(self, data: bytes) -> None:
        """Encrypt plaintext for the client (take it back with ``outgoing``). Raises ``TlsFailure``."""
        n = len(data)
        if not n:
            return
        # bytes go to C as they are; other buffers (bytearray, memoryview) through cffi's from_buffer.
        result = _SSL_write(self._ssl, data if type(data) is bytes else _ffi.from_buffer(data), n)
        if result != n:     # partial writes are off: anything but all of it is a failure
            raise self._call_failed(result)

    def encrypt(self, data: bytes) -> bytes | memoryview:
        """``write`` then ``outgoing`` in one call: the ciphertext to send for ``data``. Raises ``TlsFailure``.

        After a big write the ciphertext is read out of the BIO once, into a buffer of its own that
        the transport gets as a memoryview (and may keep until sent), rather than copied twice
        through the scratch buffer into bytes: a bulk transfer's every byte.
        """
        n = len(data)
        if n:
            result = _SSL_write(self._ssl, data if type(data) is bytes else _ffi.from_buffer(data), n)
            if result != n:
                raise self._call_failed(result)
            if n > _BIG_WRITE:
                size = _BIO_pending(self._out, _NULL)
                buf = _no_zero_allocator("char[]", size)
                got = _BIO_read(self._out, buf, size)
                if got != size:
                    raise TlsFailure(Reason.INTERNAL_ERROR, f"memory BIO read {got} of {size} bytes")
                if not self.grown:
                    self.grown = GROWN
                return memoryview(_ffi.buffer(buf, size))
        return self.outgoing()

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
