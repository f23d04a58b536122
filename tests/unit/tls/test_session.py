"""TlsSession's memory BIOs: big chunks mark the session grown; release_buffers swaps empty BIOs for
new ones (freeing what the old ones kept) and the session goes on working both ways."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import pytest
from OpenSSL import SSL

from sniproxy.demo.pki import TestPki, build
from sniproxy.tls.session import GROWN, GROWN_AT, SMALL, TlsSession
from tests.unit.driver.kit import TlsClient, mail_config, snapshot


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def _established(pki: TestPki, tmp: Path) -> tuple[TlsSession, TlsClient]:
    """A server session (flow 2bis, card required) and its client, through the handshake."""
    server = TlsSession(snapshot(mail_config(pki), tmp).flows["2bis"])
    client = TlsClient(pki, sni=None)
    client.handshake_session(server)
    assert server.established and server.read() == (b"", False)
    return server, client


def _to_client(server: TlsSession, client: TlsClient, data: bytes) -> bytes:
    server.write(data)
    client.ssl.bio_write(server.outgoing())
    got = []
    while True:
        try:
            got.append(client.ssl.recv(65536))
        except SSL.WantReadError:
            return b"".join(got)


def _to_server(server: TlsSession, client: TlsClient, data: bytes) -> bytes:
    client.ssl.sendall(data)
    server.feed(client.outgoing())
    plain, eof = server.read()
    assert not eof
    return plain


def test_small_records_do_not_mark_it(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    server.release_buffers()
    assert server.grown == SMALL
    assert _to_server(server, client, b"a NOOP\r\n") == b"a NOOP\r\n"
    assert _to_client(server, client, b"a OK\r\n") == b"a OK\r\n"
    assert server.grown == SMALL


@pytest.mark.parametrize("direction", ["to_client", "to_server"])
def test_a_big_chunk_marks_it(pki: TestPki, tmp_path: Path, direction: str) -> None:
    server, client = _established(pki, tmp_path)
    server.release_buffers()
    data = b"x" * (GROWN_AT + 1)
    move = _to_client if direction == "to_client" else _to_server
    assert move(server, client, data) == data
    assert server.grown == GROWN


def test_release_swaps_both_bios_and_the_session_goes_on(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    conn = server._conn
    # pyOpenSSL's private names this relies on: an upgrade that renames them must fail here
    old_in, old_out = conn._into_ssl, conn._from_ssl
    assert old_in is not None and old_out is not None and conn._ssl is not None
    server.release_buffers()
    assert conn._into_ssl != old_in and conn._from_ssl != old_out
    assert server.grown == SMALL
    big = b"y" * 100_000
    assert _to_server(server, client, big) == big
    assert _to_client(server, client, big) == big
    server.release_buffers()
    assert _to_server(server, client, b"a LOGOUT\r\n") == b"a LOGOUT\r\n"
    assert _to_client(server, client, b"* BYE\r\n") == b"* BYE\r\n"


def test_a_bio_holding_bytes_is_kept(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    conn = server._conn
    client.ssl.sendall(b"a NOOP\r\n")
    server.feed(client.outgoing())              # not read yet
    server.write(b"* OK\r\n")                   # not taken yet
    old_in, old_out = conn._into_ssl, conn._from_ssl
    server.release_buffers()
    assert conn._into_ssl == old_in and conn._from_ssl == old_out
    assert server.read() == (b"a NOOP\r\n", False)
    client.ssl.bio_write(server.outgoing())
    assert client.ssl.recv(100) == b"* OK\r\n"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def _c_heap() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    m = libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def test_release_gives_the_memory_back(pki: TestPki, tmp_path: Path) -> None:
    try:
        _c_heap()
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2")
    server, client = _established(pki, tmp_path)
    server.release_buffers()
    # 256 KiB one way, then the other, as one read each: both BIOs grow past 256 KiB
    big = b"z" * 262144
    assert _to_client(server, client, big) == big
    assert _to_server(server, client, big) == big
    gc.collect()
    before = _c_heap()
    server.release_buffers()
    freed = before - _c_heap()
    assert freed > 400_000, freed


def test_outgoing_takes_everything_then_nothing(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    assert server.outgoing() == b""
    server.write(b"a" * 40000)                  # three records
    out = server.outgoing()
    assert len(out) > 40000 and server.outgoing() == b""
    client.ssl.bio_write(out)
    got = b""
    while len(got) < 40000:
        got += client.ssl.recv(65536)
    assert got == b"a" * 40000


def test_read_takes_every_record_of_a_chunk(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    for part in (b"a1 NOOP\r\n", b"a2 NOOP\r\n", b"x" * 20000):
        client.ssl.sendall(part)
    server.feed(client.outgoing())
    assert server.read() == (b"a1 NOOP\r\na2 NOOP\r\n" + b"x" * 20000, False)
    assert server.read() == (b"", False)


def test_read_sees_close_notify_after_data_in_the_same_chunk(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    client.ssl.sendall(b"a LOGOUT\r\n")
    client.ssl.shutdown()
    server.feed(client.outgoing())
    assert server.read() == (b"a LOGOUT\r\n", True)


def test_read_of_half_a_record_waits_for_the_rest(pki: TestPki, tmp_path: Path) -> None:
    server, client = _established(pki, tmp_path)
    client.ssl.sendall(b"a NOOP\r\n")
    record = client.outgoing()
    server.feed(record[:10])
    assert server.read() == (b"", False)
    server.feed(record[10:])
    assert server.read() == (b"a NOOP\r\n", False)
