"""TlsSession's record path: OpenSSL called through pyOpenSSL's binding with one worker-wide scratch buffer
(docs/decisions/0011-tls-record-path.md). What it relies on is pinned here; what it must keep doing is
checked against a real client."""

from __future__ import annotations

from pathlib import Path

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib

from sniproxy.demo.pki import TestPki, build
from sniproxy.errors import Reason
from sniproxy.tls import session as session_mod
from sniproxy.tls.session import TlsFailure, TlsSession
from tests.unit.driver.kit import TlsClient, mail_config, snapshot


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def _established(pki: TestPki, tmp: Path) -> tuple[TlsSession, TlsClient]:
    server = TlsSession(snapshot(mail_config(pki), tmp).flows["2bis"])
    client = TlsClient(pki, sni=None)
    client.handshake_session(server)
    assert server.established and server.read() == (b"", False)
    return server, client


def _client_reads(client: TlsClient, data: bytes, want: int) -> bytes:
    client.ssl.bio_write(data)
    got = b""
    while len(got) < want:
        got += client.ssl.recv(65536)
    return got


def test_what_the_path_relies_on_is_there(pki: TestPki, tmp_path: Path) -> None:
    # pyOpenSSL's private names and the binding's functions: an upgrade that drops one must fail here.
    conn = SSL.Connection(snapshot(mail_config(pki), tmp_path).flows["2bis"].context, None)
    for name in ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error"):
        assert getattr(conn, name, None) is not None, name
    for name in ("SSL_read", "SSL_write", "SSL_get_error", "SSL_clear_mode", "SSL_set_bio", "BIO_read",
                 "BIO_write", "BIO_get_mem_data", "BIO_new", "BIO_s_mem"):
        assert hasattr(lib, name), name


def test_partial_writes_are_off_so_one_write_takes_it_all(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    assert not lib.SSL_set_mode(server._ssl, 0) & lib.SSL_MODE_ENABLE_PARTIAL_WRITE   # (0: reads the mode)
    big = bytes(range(256)) * 1200              # 307,200 bytes: 19 records, more than the scratch buffer
    server.write(big)
    out = server.outgoing()
    assert len(out) > len(big) and server.outgoing() == b""
    assert _client_reads(client, out, len(big)) == big


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_other_buffers_than_bytes(pki: TestPki, tmp_path: Path, kind: type) -> None:
    server, client = _established(pki, tmp_path)
    server.write(kind(b"* OK\r\n"))
    assert _client_reads(client, server.outgoing(), 6) == b"* OK\r\n"
    client.ssl.sendall(b"a NOOP\r\n")
    server.feed(kind(client.outgoing()))
    assert server.read() == (b"a NOOP\r\n", False)


def test_more_plaintext_than_the_scratch_buffer_in_one_feed(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    big = bytes(range(251)) * 2000               # 502,000 bytes: twice the scratch buffer
    client.ssl.sendall(big)
    client.ssl.sendall(b"tail")
    server.feed(client.outgoing())
    assert server.read() == (big + b"tail", False)
    assert server.read() == (b"", False)


def test_close_notify_after_many_records(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    big = b"q" * 300_000
    client.ssl.sendall(big)
    client.ssl.shutdown()
    server.feed(client.outgoing())
    assert server.read() == (big, True)


def test_close_notify_alone(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    client.ssl.shutdown()
    server.feed(client.outgoing())
    assert server.read() == (b"", True)


def test_two_sessions_share_the_scratch_buffer_without_mixing(pki: TestPki, tmp_path: Path) -> None:
    a, ca = _established(pki, tmp_path)
    b, cb = _established(pki, tmp_path)
    ca.ssl.sendall(b"A" * 70000)
    cb.ssl.sendall(b"B" * 30)
    a.feed(ca.outgoing())
    b.feed(cb.outgoing())
    got_a, got_b = a.read(), b.read()
    assert got_a == (b"A" * 70000, False) and got_b == (b"B" * 30, False)
    a.write(b"a" * 50000)
    b.write(b"b" * 10)
    out_a, out_b = a.outgoing(), b.outgoing()
    assert _client_reads(ca, out_a, 50000) == b"a" * 50000
    assert _client_reads(cb, out_b, 10) == b"b" * 10


def test_a_damaged_record_fails_with_openssl_words(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    client.ssl.sendall(b"a NOOP\r\n")
    record = bytearray(client.outgoing())
    record[-1] ^= 0xFF                           # the AEAD tag no longer matches
    server.feed(bytes(record))
    with pytest.raises(TlsFailure) as err:
        server.read()
    assert err.value.reason is Reason.HANDSHAKE_FAILED
    assert "decrypt" in err.value.detail or "bad record mac" in err.value.detail, err.value.detail
    assert server.outgoing()                     # the (encrypted) alert, for the driver to flush


def test_a_failed_call_without_an_ssl_error_still_fails(pki: TestPki, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = _established(pki, tmp_path)
    monkeypatch.setattr(session_mod, "_SSL_write", lambda ssl, data, n: n - 1)
    with pytest.raises(TlsFailure) as err:
        server.write(b"abc")
    assert err.value.reason is Reason.HANDSHAKE_FAILED and "returned 2" in err.value.detail


def test_encrypt_a_big_write_in_one_copy(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    server.release_buffers()
    small = server.encrypt(b"* OK\r\n")
    assert type(small) is bytes and _client_reads(client, small, 6) == b"* OK\r\n"
    big = bytes(range(256)) * 1000               # 256,000 bytes, as uvloop reads them
    out = server.encrypt(big)
    assert isinstance(out, memoryview) and len(out) > len(big) and server.grown
    assert server.outgoing() == b""              # all of it was taken
    assert _client_reads(client, bytes(out), len(big)) == big
    assert server.encrypt(b"") == b""
