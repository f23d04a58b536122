"""TlsSession.read_inbox: ciphertext that uvloop read into the worker-wide ``INBOX`` (docs/decisions/
0014-bulk-upload.md). A bulk read is decrypted from a read-only BIO over the inbox, swapped out again before
the call returns; with ``views`` its plaintext comes in a buffer of its own. Checked against a real client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from OpenSSL._util import ffi, lib

from sniproxy.demo.pki import TestPki, build
from sniproxy.tls.session import INBOX, INBOX_SIZE, TlsFailure, TlsSession
from tests.unit.driver.kit import TlsClient, mail_config, snapshot


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def _established(pki: TestPki, tmp: Path, views: bool) -> tuple[TlsSession, TlsClient]:
    server = TlsSession(snapshot(mail_config(pki), tmp).flows["2bis"])
    client = TlsClient(pki, sni=None)
    client.handshake_session(server)
    assert server.established and server.read() == (b"", False)
    server.views = views
    return server, client


def _records(client: TlsClient, plain: bytes) -> bytes:
    out = []
    for i in range(0, len(plain), 50_000):
        client.ssl.sendall(plain[i:i + 50_000])
        out.append(client.outgoing())
    return b"".join(out)


def _read(server: TlsSession, chunk: bytes) -> tuple[bytes | memoryview, bool]:
    INBOX[:len(chunk)] = chunk
    return server.read_inbox(len(chunk))


def test_the_path_relies_on_these_binding_functions() -> None:
    for name in ("BIO_new_mem_buf", "BIO_set_mem_eof_return", "SSL_set_bio", "BIO_free", "BIO_new", "BIO_s_mem"):
        assert hasattr(lib, name), name


@pytest.mark.parametrize("views", [False, True])
def test_records_cut_across_reads_of_every_size(pki: TestPki, tmp_path: Path, views: bool) -> None:
    server, client = _established(pki, tmp_path, views)
    plain = os.urandom(1_200_000)
    stream = _records(client, plain)
    got: list[bytes | memoryview] = []
    off = 0
    for cut in [INBOX_SIZE, 33, 70_001, INBOX_SIZE, 5, 16_000, 40_000] * 10:
        chunk = stream[off:off + cut]
        if not chunk:
            break
        data, eof = _read(server, chunk)
        assert not eof
        got.append(data)
        off += len(chunk)
    assert off == len(stream)
    # The big reads' plaintext: views with ``views`` (their buffers outlive the later reads), else bytes.
    assert any(isinstance(g, memoryview) for g in got) is views
    assert b"".join(got) == plain


def test_after_a_bulk_read_the_session_reads_bytes_again(pki: TestPki, tmp_path: Path) -> None:
    # The read-only BIO over the inbox is gone: the next small read is written into a memory BIO (a read-only
    # BIO would refuse it), and overwriting the inbox changes nothing already decrypted.
    server, client = _established(pki, tmp_path, views=True)
    big = os.urandom(200_000)
    data, _ = _read(server, _records(client, big))
    INBOX[:INBOX_SIZE] = b"\0" * INBOX_SIZE
    client.ssl.sendall(b"small")
    assert server.read(client.outgoing()) == (b"small", False)
    assert bytes(data) == big


def test_bytes_after_close_notify_are_kept_not_lost(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path, views=True)
    body = os.urandom(100_000)
    client.ssl.sendall(body)
    client.ssl.shutdown()
    stream = client.outgoing()
    data, eof = _read(server, stream + b"trailing")
    assert eof and bytes(data) == body
    # What came after the close_notify is in a memory BIO of the session's own, not read from the inbox later.
    INBOX[:8] = b"\0" * 8
    assert lib.BIO_get_mem_data(server._in, ffi.NULL) == len(b"trailing")


def test_a_damaged_record_in_a_bulk_read_fails_and_restores_the_bio(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path, views=True)
    stream = bytearray(_records(client, os.urandom(100_000)))
    stream[50_000] ^= 0x01
    with pytest.raises(TlsFailure, match="bad record mac"):
        _read(server, bytes(stream))
    assert server.outgoing()            # the alert is there to send
    server.feed(b"\x17\x03\x03")        # the read BIO takes bytes again (a read-only one would not)
