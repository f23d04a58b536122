"""One whole STARTTLS connection (IMAP or SMTP) through the driver, in one process, no sockets.

``python -O bench/starttls_conn.py --kind smtp --number 200`` runs ``--number`` connections of the
``bench/peers_mail.py`` dialog through a ``ClientConnection`` over the in-memory transports of
``tests/unit/driver/kit.py``; the backend is scripted (its replies fed to the back half's protocol):

- ``imap``: greeting, ``a STARTTLS``, TLS 1.3 with the ``fort`` card (no SNI, default flow), ``b LOGIN``;
  the backend greets, answers the LOGIN; the client reads the tagged OK and closes (close_notify, EOF);
- ``smtp``: greeting, ``EHLO``, ``STARTTLS``, the handshake, ``EHLO``; the backend greets, answers EHLO;
  the client sends ``AUTH PLAIN <initial response>``, the backend answers 235; the client closes.

The listeners are those of ``bench/peers_mail.py`` (``identity: none``, log level warning, JSON), run
under ``uvloop`` like the server. Modes:

- default: wall microseconds per connection (best of ``--repeat``), noisy on a shared machine;
- ``--count``: Python bytecode run in ``sniproxy/`` per connection (``sys.settrace`` opcode events), by file;
- ``--profile``: cProfile of ``--number`` connections, sorted by own time (top 40);
- ``--callgrind`` under ``valgrind --tool=callgrind``: instruction counts; run with ``--number N`` and
  ``--number 0`` and subtract (setup, PKI and imports cancel out). The client's own TLS work (pyOpenSSL, RSA
  signature with the card) is in the figure and is the same before and after a server change: compare runs
  of this script.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import dis
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniproxy.demo.pki import TestPki, build  # noqa: E402
from sniproxy.observability.log import configure  # noqa: E402
from tests.unit.driver.kit import FakeDialer, Harness, TlsClient, snapshot  # noqa: E402

PKI_DIR = Path(tempfile.gettempdir()) / "sniproxy-starttls-conn-pki"  # build() reuses it (idempotent)
AUTH = b"AUTH PLAIN " + base64.b64encode(b"\0bench.user@hopital.mssante.fr\0bench-password") + b"\r\n"
EHLO_REPLY = b"250-backend.bench\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"


def config(pki: TestPki) -> dict[str, Any]:
    """The two STARTTLS listeners of bench/peers_mail.py, as bench/peers.py configures sniproxy."""
    from sniproxy.demo.conf import DemoPorts, config_dict

    sys.path.insert(0, str(ROOT / "bench"))
    import peers_mail  # bench/peers_mail.py

    cfg = config_dict(pki, DemoPorts())
    cfg["log"] = {"level": "warning", "format": "json"}
    cfg["limits"] = {"max_connections": 20000, "max_per_ip": 20000}
    cfg["listeners"] = peers_mail.sniproxy_listeners({"imap": 10143, "smtp": 10025}, {"imap": 20143, "smtp": 20025})
    return cfg


def _check(ok: bool, what: str = "unexpected answer") -> None:
    # Not ``assert``: the bench runs under ``python -O`` like the server, and the reads must happen.
    if not ok:
        raise RuntimeError(what)


class Conn:
    """Runs whole connections of one kind against one snapshot."""

    def __init__(self, snap: Any, dialer: FakeDialer, pki: TestPki) -> None:
        self.snap, self.dialer, self.pki = snap, dialer, pki

    async def imap(self) -> None:
        h = Harness(self.snap, "mail-imap")
        _check(h.t.take().startswith(b"* OK"))
        h.send(b"a STARTTLS\r\n")
        _check(h.t.take().startswith(b"a OK"))
        client = TlsClient(self.pki, sni=None)
        client.handshake(h)
        await asyncio.sleep(0)  # the backend connect task
        backend, proto = self.dialer.last
        client.send(h, b'b LOGIN "bench.user@hopital.mssante.fr" "bench-password"\r\n')
        proto.data_received(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] bench backend ready\r\n")
        _check(backend.take().startswith(b"b LOGIN"))
        proto.data_received(b"b OK [CAPABILITY IMAP4rev1] LOGIN completed\r\n")
        _check(client.recv(h).startswith(b"b OK"), "no LOGIN answer")
        self._close(h, client, backend, proto)

    async def smtp(self) -> None:
        h = Harness(self.snap, "mail-smtp")
        _check(h.t.take().startswith(b"220 "))
        h.send(b"EHLO client.bench\r\n")
        _check(b"STARTTLS" in h.t.take())
        h.send(b"STARTTLS\r\n")
        _check(h.t.take().startswith(b"220 "))
        client = TlsClient(self.pki, sni=None)
        client.handshake(h)
        await asyncio.sleep(0)
        backend, proto = self.dialer.last
        client.send(h, b"EHLO client.bench\r\n")
        proto.data_received(b"220 backend.bench ESMTP ready\r\n")
        _check(backend.take() == b"EHLO client.bench\r\n")
        proto.data_received(EHLO_REPLY)
        _check(client.recv(h).startswith(b"250-"), "no EHLO answer")
        client.send(h, AUTH)
        _check(backend.take() == AUTH)
        proto.data_received(b"235 2.7.0 Authentication successful\r\n")
        _check(client.recv(h).startswith(b"235"), "no AUTH answer")
        self._close(h, client, backend, proto)

    @staticmethod
    def _close(h: Harness, client: TlsClient, backend: Any, proto: Any) -> None:
        # The bench client closes its socket without close_notify (ssl's wrap_socket context exit).
        h.conn.eof_received()
        h.conn.connection_lost(None)
        proto.connection_lost(None)
        _check(h.conn.reason is not None)


async def run(
    kind: str, number: int, mode: str, repeat: int, by_function: bool = False, everywhere: bool = False
) -> str:
    pki = build(PKI_DIR)
    dialer = FakeDialer()
    loop = asyncio.get_running_loop()
    try:
        loop.create_connection = dialer.create_connection  # type: ignore[method-assign]
    except AttributeError:  # uvloop.Loop has no instance dict
        return "cannot patch create_connection on this loop"
    with tempfile.TemporaryDirectory() as d:
        snap = snapshot(config(pki), Path(d))
    conn = Conn(snap, dialer, pki)
    one = conn.imap if kind == "imap" else conn.smtp
    await one()  # warm: imports, caches (card_of), first-use allocations
    dialer.conns.clear()
    if mode == "count":
        return await count(one, number, by_function, everywhere)
    if mode == "profile":
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(number):
            await one()
            dialer.conns.clear()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)
        return ""
    if mode == "plain":  # for callgrind: the connections only, no clock
        for _ in range(number):
            await one()
            dialer.conns.clear()
        return f"{kind}: {number} connections"
    if not number:
        return "0 runs"
    best, best_server = float("inf"), float("inf")
    with ServerClock() as clock:
        for _ in range(repeat):
            clock.spent = 0.0
            t0 = time.perf_counter()
            for _ in range(number):
                await one()
                dialer.conns.clear()
            best = min(best, (time.perf_counter() - t0) / number)
            best_server = min(best_server, clock.spent / number)
    return (
        f"{kind}: {best * 1e6:.0f} us per connection, of which {best_server * 1e6:.0f} us in the server's "
        f"entry points (best of {repeat} x {number})"
    )


class ServerClock:
    """Adds up the wall time spent inside the server's entry points (the socket and task callbacks of the
    front and back halves), so the client's own TLS work is left out; nested entries count once."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._depth = 0
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> ServerClock:
        from sniproxy.driver import front, mail

        for cls, names in (
            (front.ClientConnection, ("connection_made", "data_received", "eof_received", "connection_lost")),
            (mail._Backend, ("connection_made", "data_received", "eof_received", "connection_lost")),
        ):
            for name in names:
                orig = getattr(cls, name)
                self._saved.append((cls, name, orig))
                setattr(cls, name, self._timed(orig))
        orig_connect = mail.MailBack._connect
        self._saved.append((mail.MailBack, "_connect", orig_connect))
        clock = self

        async def _connect(back: Any) -> None:
            clock._depth += 1
            t0 = time.perf_counter()
            try:
                await orig_connect(back)
            finally:
                clock._depth -= 1
                if not clock._depth:
                    clock.spent += time.perf_counter() - t0

        mail.MailBack._connect = _connect  # type: ignore[method-assign]
        return self

    def _timed(self, orig: Any) -> Any:
        def timed(*args: Any) -> Any:
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return orig(*args)
            finally:
                self._depth -= 1
                if not self._depth:
                    self.spent += time.perf_counter() - t0

        return timed

    def __exit__(self, *exc: object) -> None:
        for cls, name, orig in self._saved:
            setattr(cls, name, orig)


def _server_side(frame: FrameType | None, root: str) -> bool:
    """True if ``frame`` runs for the server: it or a caller is in ``sniproxy/`` (before the harness)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(root):
            return True
        if name == __file__ or name.endswith("tests/unit/driver/kit.py"):
            return False
        frame = frame.f_back
    return False


async def count(one: Any, number: int, by_function: bool, everywhere: bool) -> str:
    """Bytecode per connection in ``sniproxy/`` (``everywhere``: also in the libraries it calls, pyOpenSSL's
    Python wrappers, asyncio, structlog...), by file (or function)."""
    root = str(ROOT / "sniproxy") + "/"
    counts: Counter[str] = Counter()
    calls: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename
        if everywhere:
            if event == "call" and not _server_side(frame, root):
                return None
        elif not name.startswith(root):
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            short = name[len(root) :] if name.startswith(root) else "(lib) " + "/".join(name.split("/")[-2:])
            key = short + (":" + frame.f_code.co_qualname if by_function else "")
            counts[key] += 1
            if dis.opname[frame.f_code.co_code[frame.f_lasti]] == "CALL":
                calls[key] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(number):
            await one()
    finally:
        sys.settrace(None)
    total = sum(counts.values())
    lib = sum(c for k, c in counts.items() if k.startswith("(lib)"))
    lines = [
        f"bytecode ops per connection: {total / number:.0f} (CALL {sum(calls.values()) / number:.0f}; "
        f"in sniproxy/ {(total - lib) / number:.0f}, in libraries {lib / number:.0f})"
    ]
    for name, c in counts.most_common(40 if by_function else 25):
        lines.append(f"  {c / number:8.0f}  CALL {calls[name] / number:5.0f}  {name}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("imap", "smtp"), default="smtp")
    ap.add_argument("--number", type=int, default=200, help="connections per run (0: setup only)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs; the best is reported")
    ap.add_argument("--count", action="store_true", help="count bytecode per connection instead of timing")
    ap.add_argument("--by-function", action="store_true", help="with --count: by function, not by file")
    ap.add_argument(
        "--everywhere",
        action="store_true",
        help="with --count: also the Python code of the "
        "libraries the server calls (pyOpenSSL, asyncio, structlog), not the client's",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the connections")
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="run the connections only (no clock), for valgrind --tool=callgrind: --number N minus --number 0",
    )
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    configure("warning", "json")
    mode = "count" if args.count else "profile" if args.profile else "plain" if args.callgrind else "time"
    if not args.no_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(asyncio.run(run(args.kind, args.number, mode, args.repeat, args.by_function, args.everywhere)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
