"""In-memory harness for the connection driver: fake transports, a fake backend dialer, a pyOpenSSL client.

No socket is opened: the front half gets a ``FakeTransport`` as its client socket and is fed bytes
directly; ``FakeDialer`` stands in for ``loop.create_connection`` so back halves get fake backend
transports; ``TlsClient`` is a real TLS client (pyOpenSSL over memory BIOs) with a card of the test PKI.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from sniproxy.config.load import load
from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.pki import TestPki
from sniproxy.driver.front import ClientConnection
from sniproxy.runtime.snapshot import Snapshot, SnapshotHolder, compile_snapshot
from sniproxy.tls.session import TlsSession

MSG, MSG_SANTE = "mss-msg.mssante.fr", "mss-msg-igcsante.mssante.fr"
IMAP_SNI = "frontimap.mssante.fr"
PORTS = DemoPorts(imap=10143, smtp=10025, imaps=10993, smtps=10465, tls=10994,
                  imap_backend="127.0.0.1:20143", smtp_backend="127.0.0.1:20025")


class FakeTransport:
    """Records what the driver does to a socket: bytes written, pauses, half-close, close."""

    def __init__(self, peer: Any = ("127.0.0.1", 40000), local: Any = ("127.0.0.1", 993)) -> None:
        self.out = bytearray()
        self.closed = False
        self.paused = False
        self.eof_written = False
        self.buffer_size = 0
        self.high: int | None = None
        self._extra = {"peername": peer, "sockname": local}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high

    def write(self, data: bytes) -> None:
        assert not self.closed, "write on a closed transport (uvloop raises)"
        self.out += data

    def writelines(self, parts: Iterable[bytes]) -> None:
        # Recorded as one write of the pieces would be: transcripts do not depend on which the driver used.
        self.write(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def take(self) -> bytes:
        """Everything written since the last take."""
        data = bytes(self.out)
        self.out.clear()
        return data


class FakeDialer:
    """Stands in for ``loop.create_connection``: each backend gets a ``FakeTransport``, or ``error`` is raised.

    With ``hold`` set, a dial waits until it is released (a backend that does not answer).
    """

    def __init__(self) -> None:
        self.conns: list[tuple[FakeTransport, asyncio.Protocol]] = []
        self.error: Exception | None = None
        self.hold: asyncio.Event | None = None

    async def create_connection(self, factory: Callable[[], asyncio.Protocol], host: str, port: int,
                                **_: Any) -> tuple[FakeTransport, asyncio.Protocol]:
        if self.hold is not None:
            await self.hold.wait()
        if self.error is not None:
            raise self.error
        proto = factory()
        transport = FakeTransport(peer=(host, port), local=("127.0.0.1", 50000 + len(self.conns)))
        self.conns.append((transport, proto))
        proto.connection_made(transport)  # type: ignore[arg-type]
        return transport, proto

    @property
    def last(self) -> tuple[FakeTransport, asyncio.Protocol]:
        """The most recent backend connection."""
        assert self.conns, "no backend connection was made"
        return self.conns[-1]


def mail_config(pki: TestPki, **listener: Any) -> dict[str, Any]:
    """The demo's bi-flux config with every mail listener; ``listener`` keys go into each of them."""
    cfg = copy.deepcopy(config_dict(pki, PORTS))
    for ls in cfg["listeners"]:
        ls.update(copy.deepcopy(listener))
    return cfg


def https_config(pki: TestPki, *, http: dict[str, Any] | None = None, client_auth: str = "required",
                 **listener: Any) -> dict[str, Any]:
    """One ``https`` listener in mode http (every identity header profile) in front of a fake backend."""
    cfg = config_dict(pki, DemoPorts(), client_auth=client_auth)
    cfg["listeners"] = [{
        "name": "https", "bind": "127.0.0.1:10443", "protocol": "https", "backend": "127.0.0.1:20080",
        "sni": {MSG: "2bis", MSG_SANTE: "igcsante"}, "default_flow": "2bis",
        "http": {"headers": ["forwarded", "nginx", "tomcat", "envoy", "rfc9440", "card"], **(http or {})},
        **listener,
    }]
    return cfg


def snapshot(cfg: dict[str, Any], tmp: Path) -> Snapshot:
    """The config validated and compiled as a worker does."""
    return compile_snapshot(load(write_config(cfg, tmp / "sniproxy.yaml")).config)


class Harness:
    """One front half over a fake client socket."""

    def __init__(self, snap: Snapshot, listener: str, peer: Any = ("127.0.0.1", 40000)) -> None:
        self.conn = ClientConnection(SnapshotHolder(snap), listener)
        self.t = FakeTransport(peer=peer)
        self.conn.connection_made(self.t)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        """Bytes from the client, handed over as uvloop does to the front's ``BufferedProtocol``.

        ``get_buffer`` then the bytes copied into it then ``buffer_updated``, in reads of at most the
        buffer's size: the path production takes (uvloop never calls ``data_received`` on it), so every
        driver test covers the worker-wide inbox and the bulk-read path, not only tests/unit/driver/
        test_bulk_path.py.
        """
        off = 0
        while off < len(data):
            buf = self.conn.get_buffer(-1)
            n = min(len(buf), len(data) - off)
            buf[:n] = data[off:off + n]
            self.conn.buffer_updated(n)
            off += n


def server_roots(pki: TestPki) -> Path:
    """One PEM with the roots of both operator server certificates."""
    dest = pki.root / "unit-client-trust.pem"
    if not dest.exists():
        dest.write_bytes(b"".join(p.read_bytes() for s in ("igc-cps-2bis", "igc-sante-elementaire-org")
                                  for p in pki.authorities[s].roots))
    return dest


class TlsClient:
    """A real TLS client (pyOpenSSL over memory BIOs) presenting ``card`` and asking for ``sni``."""

    def __init__(self, pki: TestPki, card: str | None = "fort", sni: str | None = MSG) -> None:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.load_verify_locations(str(server_roots(pki)))
        ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
        if card is not None:
            ctx.use_certificate_chain_file(str(pki.cards[card].chain))
            ctx.use_privatekey_file(str(pki.cards[card].key))
        self.ssl = SSL.Connection(ctx, None)
        self.ssl.set_connect_state()
        if sni is not None:
            self.ssl.set_tlsext_host_name(sni.encode())
        self.closed = False

    def outgoing(self) -> bytes:
        out = []
        while True:
            try:
                out.append(self.ssl.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(out)

    def hello(self) -> bytes:
        """The ClientHello."""
        try:
            self.ssl.do_handshake()
        except SSL.WantReadError:
            pass
        return self.outgoing()

    def handshake(self, h: Harness) -> None:
        """Run the handshake against the harness's front half until neither side has more to say."""
        h.send(self.hello())
        for _ in range(10):
            self.ssl.bio_write(h.t.take())
            try:
                self.ssl.do_handshake()
            except SSL.WantReadError:
                pass
            out = self.outgoing()
            if not out:
                return
            h.send(out)
        raise AssertionError("handshake did not settle")

    def handshake_session(self, server: TlsSession) -> None:
        """Run the handshake against a bare ``TlsSession`` (no driver) until both sides are done."""
        server.feed(self.hello())
        for _ in range(10):
            done = server.handshake()
            self.ssl.bio_write(server.outgoing())
            try:
                self.ssl.do_handshake()
            except SSL.WantReadError:
                pass
            out = self.outgoing()
            if done and not out:
                return
            server.feed(out)
        raise AssertionError("handshake did not settle")

    def send(self, h: Harness, plain: bytes) -> None:
        """Plaintext to the proxy."""
        self.ssl.sendall(plain)
        h.send(self.outgoing())

    def close_notify(self, h: Harness) -> None:
        """The client's close_notify."""
        self.ssl.shutdown()
        h.send(self.outgoing())

    def recv(self, h: Harness) -> bytes:
        """Decrypt everything the proxy wrote since the last call (``closed``: its close_notify came)."""
        data = h.t.take()
        if data:
            self.ssl.bio_write(data)
        out = []
        while True:
            try:
                out.append(self.ssl.recv(65536))
            except SSL.WantReadError:
                return b"".join(out)
            except SSL.ZeroReturnError:
                self.closed = True
                return b"".join(out)


async def settle(rounds: int = 5) -> None:
    """Let tasks the driver created (backend connects) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)
