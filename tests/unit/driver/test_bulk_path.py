"""The client's reads as uvloop hands them to a ``BufferedProtocol`` (docs/decisions/0014-bulk-upload.md):
into the worker-wide ``INBOX`` (``get_buffer``), then ``buffer_updated``. What a raw relay's backend transport
is given may be kept unsent (uvloop keeps a memoryview without copying it while the socket is full): it must
never be memory that a later read overwrites. Backpressure and the mail relays' bytes stay as they were."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from sniproxy.driver.front import ClientConnection
from sniproxy.driver.mail import MailBack
from sniproxy.tls.session import INBOX_SIZE
from tests.unit.driver import kit
from tests.unit.driver.kit import (
    IMAP_SNI,
    FakeDialer,
    FakeTransport,
    Harness,
    TlsClient,
    https_config,
    mail_config,
    settle,
    snapshot,
)

IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE] backend ready\r\n"


class KeepingTransport(FakeTransport):
    """A transport whose socket is full: it keeps what it is given, as given (uvloop keeps a memoryview unsent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kept: list[bytes | memoryview] = []

    def write(self, data: bytes) -> None:
        assert not self.closed, "write on a closed transport (uvloop raises)"
        self.kept.append(data)

    def sent(self) -> bytes:
        """What the socket would send once it drains: the kept objects as they are now."""
        return b"".join(self.kept)


def read_into(conn: ClientConnection, stream: bytes, cuts: list[int]) -> None:
    """``stream`` read by uvloop in reads of ``cuts`` bytes (at most the buffer's size), through the buffer."""
    off = 0
    for cut in cuts:
        if off >= len(stream):
            break
        buf = conn.get_buffer(-1)
        n = min(cut, len(buf), len(stream) - off)
        buf[:n] = stream[off:off + n]
        conn.buffer_updated(n)
        off += n
    assert off == len(stream), "cuts too short for the stream"


def ciphertext(client: TlsClient, plain: bytes, write: int = 50_000) -> bytes:
    """The client's records for ``plain``, written ``write`` bytes at a time."""
    out = []
    for i in range(0, len(plain), write):
        client.ssl.sendall(plain[i:i + write])
        out.append(client.outgoing())
    return b"".join(out)


async def _relaying(pki: TestPki, tmp_path: Path, listener: str = "tls",
                    full: pytest.MonkeyPatch | None = None) -> tuple[Harness, TlsClient]:
    """A connection relaying; with ``full``, its backend transport a ``KeepingTransport``."""
    h = Harness(snapshot(mail_config(pki), tmp_path), listener)
    client = TlsClient(pki, sni=IMAP_SNI)
    client.handshake(h)
    if full is not None:     # the backend is dialled from here on (the client's transport stays as it is)
        full.setattr(kit, "FakeTransport", KeepingTransport)
    await settle()
    return h, client


async def test_a_multi_chunk_upload_to_a_full_backend_arrives_intact(pki: TestPki, tmp_path: Path,
                                                                      events: list[dict[str, Any]],
                                                                      dialer: FakeDialer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The backend keeps every write unsent; reads of every size, records cut across them, the biggest the
    # whole buffer: whatever it was handed must still hold the bytes after the later reads and decryptions.
    h, client = await _relaying(pki, tmp_path, full=monkeypatch)
    backend, _ = dialer.last
    assert isinstance(backend, KeepingTransport)
    plain = os.urandom(1_500_000)
    stream = ciphertext(client, plain)
    read_into(h.conn, stream, [INBOX_SIZE, 1000, 40_000, 100_003, INBOX_SIZE, 17, INBOX_SIZE] * 8)
    assert backend.sent() == plain
    # What a raw relay handed over for the big reads: views of buffers made for them, not bytes copies.
    assert any(isinstance(k, memoryview) for k in backend.kept)
    assert h.conn.reason is None and events == []


async def test_a_paused_backend_pauses_the_client_and_nothing_is_lost(pki: TestPki, tmp_path: Path,
                                                                      events: list[dict[str, Any]],
                                                                      dialer: FakeDialer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    h, client = await _relaying(pki, tmp_path, full=monkeypatch)
    backend, proto = dialer.last
    assert isinstance(backend, KeepingTransport)
    first, second = os.urandom(600_000), os.urandom(700_000)
    read_into(h.conn, ciphertext(client, first), [INBOX_SIZE] * 4)
    proto.pause_writing()                       # the backend's buffer is full: the client is not read
    assert h.t.paused
    # uvloop may still hand over what it had read; then reading resumes with the backend.
    read_into(h.conn, ciphertext(client, second), [INBOX_SIZE - 1, 5, INBOX_SIZE] * 2)
    proto.resume_writing()
    assert not h.t.paused
    assert backend.sent() == first + second and events == []


async def test_the_buffer_counts_bytes_and_moves_the_idle_clock(pki: TestPki, tmp_path: Path,
                                                                events: list[dict[str, Any]],
                                                                dialer: FakeDialer) -> None:
    h, client = await _relaying(pki, tmp_path)
    backend, _ = dialer.last
    before, clock = h.conn.bytes_in, h.conn.last_io
    stream = ciphertext(client, b"x" * 300_000)
    read_into(h.conn, stream, [INBOX_SIZE] * 2)
    assert backend.take() == b"x" * 300_000
    assert h.conn.bytes_in == before + len(stream) and h.conn.last_io >= clock


async def test_a_mail_relay_gets_bytes_from_a_big_read(pki: TestPki, tmp_path: Path,
                                                       events: list[dict[str, Any]], dialer: FakeDialer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # IMAP looks at each chunk as bytes (an IDLE line, the relay's parser): big reads must not become views.
    given: list[type] = []
    relay_client_data = MailBack.client_data

    def spy(self: MailBack, data: bytes) -> None:
        given.append(type(data))
        relay_client_data(self, data)
    monkeypatch.setattr(MailBack, "client_data", spy)
    h, client = await _relaying(pki, tmp_path, "imaps")
    backend, proto = dialer.last
    proto.data_received(IMAP_GREETING)
    await settle()
    assert client.recv(h).startswith(b"* OK")
    line = b"a APPEND INBOX {200000+}\r\n" + b"m" * 200_000 + b"\r\n"
    read_into(h.conn, ciphertext(client, line), [INBOX_SIZE])
    assert backend.take().endswith(b"m" * 1000 + b"\r\n")
    assert events == [] and not h.t.closed
    assert given and set(given) == {bytes}


async def test_the_handshake_read_through_the_buffer(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                     dialer: FakeDialer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before the relay the buffer's bytes are copied out (ClientHello, handshake): a connection made through
    # get_buffer/buffer_updated alone relays as one made through data_received.
    monkeypatch.setattr(Harness, "send", lambda self, data: read_into(self.conn, data, [INBOX_SIZE] * 4))
    h, client = await _relaying(pki, tmp_path)
    backend, proto = dialer.last
    client.send(h, b"ping")
    assert backend.take() == b"ping"
    proto.data_received(b"pong")
    assert client.recv(h) == b"pong" and events == []


@pytest.mark.parametrize(("mode", "views"), [("tcp", True), ("http", False)])
async def test_https_gets_views_in_mode_tcp_only(pki: TestPki, tmp_path: Path, events: list[dict[str, Any]],
                                                 dialer: FakeDialer, mode: str, views: bool) -> None:
    # An https listener in mode tcp is a raw relay (its backend transport writes any buffer); in mode http the
    # HTTP half parses the bytes.
    h = Harness(snapshot(https_config(pki, http={"mode": mode}), tmp_path), "https")
    client = TlsClient(pki)
    client.handshake(h)
    await settle()
    assert h.conn.tls is not None and h.conn.tls.views is views
