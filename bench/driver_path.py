"""The connection driver's per-record cost in one process, no sockets: what the driver adds, not the kernel.

``python bench/driver_path.py`` (about 30 s). The driver runs over the in-memory transports of
``tests/unit/driver/kit.py`` (a fake client socket, a fake backend dialer, a pyOpenSSL client with the
test PKI's ``fort`` card), so no loopback ``send()`` and no other process's scheduling enters the
figure. Two paths, each timed over ``--n`` iterations, best of ``--repeat`` runs (perf_counter; the
best run is the one the machine's other load disturbed least):

- ``mail``: a ``tls`` listener (the raw relay, as ``bench/run.py``): 1 KB client -> backend, then
  1 KB backend -> client, each through TLS;
- ``http``: an ``https`` listener in mode http with every identity header profile: one small SOAP
  POST and its response on a kept-alive connection (pooled backend connection).

- ``imap``: an ``imaps`` listener after the backend's greeting: a NOOP to the backend and its answer,
  through the IMAP backend filter.
- ``relay``: the http step's bytes through a ``tls`` listener (the raw relay): the same TLS and driver,
  no HTTP (the floor the http step is compared with; decision 0013).

``--server-only`` (http, relay): the proxy's side of each step alone; the client's records are made
before the steps and the proxy's output is dropped undecrypted (decision 0013).

Both include the client's own TLS work (the same for any driver): compare runs of this script, not
its figures with other benches. ``--count`` measures what does not depend on the machine's load: the
bytecode the interpreter runs in ``sniproxy/`` per iteration (``sys.settrace`` opcode events), with
the attribute loads and stores and the calls among them; ``driver`` is the part in the driver's own
modules.

Instruction counts (decision 0010), which do not depend on the load either: ``--only http --pki DIR
--callgrind N`` runs 100 steps then N more, untimed, over a PKI built once in DIR (its RSA key
generation would otherwise vary from run to run); run it under ``valgrind --tool=callgrind`` with N
and with 0, the difference over N is one step. ``--headers forwarded,nginx`` gives the http step the
identity profiles of ``bench/peers.py`` (default: all six).
"""

from __future__ import annotations

import argparse
import asyncio
import dis
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniproxy.demo.pki import build  # noqa: E402
from sniproxy.observability.log import configure  # noqa: E402
from tests.unit.driver.kit import (  # noqa: E402
    IMAP_SNI,
    MSG,
    FakeDialer,
    Harness,
    TlsClient,
    https_config,
    mail_config,
    settle,
    snapshot,
)

SOAP = (b'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
        b'envelope/"><soap:Body><m:Ping xmlns:m="urn:mss"><m:Id>42</m:Id></m:Ping></soap:Body></soap:Envelope>')
POST = (b"POST /echo HTTP/1.1\r\nHost: " + MSG.encode() + b"\r\nContent-Type: text/xml\r\nContent-Length: "
        + str(len(SOAP)).encode() + b"\r\n\r\n" + SOAP)
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: " + str(len(SOAP)).encode()
            + b"\r\n\r\n" + SOAP)


Step = Callable[[], None]
PKI_DIR: Path | None = None   # --pki: a PKI built once and reused (its RSA key generation varies run to run)
HEADERS: list[str] = []       # --headers: the http step's identity profiles (default: all six, as kit's config)
SERVER_ONLY = False           # --server-only: the proxy's side alone (server_step)
RECORDS = 1100                # --server-only: client records made up front (100 warm-up steps + N <= 1000)
ATTR_OPS = {"LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR"}
DRIVER_FILES = ("sniproxy/driver/", "sniproxy/connection.py", "sniproxy/http_connection.py")


def timed(step: Step, n: int, repeat: int) -> float:
    """Best microseconds per ``step`` over ``repeat`` runs of ``n``."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def counted(step: Step, n: int) -> dict[str, float]:
    """Bytecode run in sniproxy/ per ``step``: all, attribute loads/stores, calls; and in the driver alone."""
    root = str(ROOT / "sniproxy") + "/"
    counts: Counter[tuple[bool, str]] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        name = frame.f_code.co_filename
        if not name.startswith(root):
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            driver = any(name.endswith(f) or f in name for f in DRIVER_FILES)
            counts[(driver, dis.opname[frame.f_code.co_code[frame.f_lasti]])] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(n):
            step()
    finally:
        sys.settrace(None)
    out: dict[str, float] = {}
    for scope, keep in (("all", (True, False)), ("driver", (True,))):
        ops = [(op, c) for (d, op), c in counts.items() if d in keep]
        out[f"{scope} ops"] = sum(c for _, c in ops) / n
        out[f"{scope} attr"] = sum(c for op, c in ops if op in ATTR_OPS) / n
        out[f"{scope} calls"] = sum(c for op, c in ops if op == "CALL") / n
    return out


async def connected(tmp: Path, listener: str, sni: str, https: bool = False) -> tuple[Harness, TlsClient, FakeDialer]:
    """A handshaken client on ``listener`` over the kit's fake transports (a dialer for its backends)."""
    pki = build(PKI_DIR or tmp / "pki")
    dialer = FakeDialer()
    asyncio.get_running_loop().create_connection = dialer.create_connection  # type: ignore[method-assign]
    cfg = https_config(pki, http={"headers": HEADERS} if HEADERS else None) if https else mail_config(pki)
    h = Harness(snapshot(cfg, tmp), listener)
    client = TlsClient(pki, sni=sni)
    client.handshake(h)
    return h, client, dialer


def round_trip(h: Harness, client: TlsClient, dialer: FakeDialer, out: bytes, back: bytes,
               reused: bool = False) -> Step:
    """One step: ``out`` from the client to the backend, then ``back`` from the backend to the client
    (``reused``: the backend connection must be the same one every time)."""
    backend, proto = dialer.last

    def step() -> None:
        client.ssl.send(out)
        h.send(client.outgoing())
        backend.out.clear()
        proto.data_received(back)
        client.ssl.bio_write(h.t.take())
        client.ssl.recv(65536)
        assert not reused or len(dialer.conns) == 1, "the backend connection was not reused"
    return step


async def mail_step(tmp: Path) -> Step:
    h, client, dialer = await connected(tmp, "tls", IMAP_SNI)
    await settle()
    payload = b"x" * 1024
    return round_trip(h, client, dialer, payload, payload)


async def imap_step(tmp: Path) -> Step:
    h, client, dialer = await connected(tmp, "imaps", IMAP_SNI)
    await settle()
    dialer.last[1].data_received(b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n")
    client.recv(h)
    return round_trip(h, client, dialer, b"a1 NOOP\r\n", b"a1 OK NOOP completed\r\n")


async def http_step(tmp: Path) -> Step:
    h, client, dialer = await connected(tmp, "https", MSG, https=True)
    client.send(h, POST)
    await settle()
    backend, proto = dialer.last
    proto.data_received(RESPONSE)
    client.recv(h)
    if SERVER_ONLY:
        return server_step(h, client, backend, proto, lambda: len(dialer.conns) == 1)
    return round_trip(h, client, dialer, POST, RESPONSE, reused=True)


def server_step(h: Harness, client: TlsClient, backend: Any, proto: Any, ok: Callable[[], bool]) -> Step:
    """--server-only: the proxy's side of one exchange alone. The client's TLS records are made before
    any step (``RECORDS`` of them, whatever N, so the N = 0 run makes them too and N minus 0 does not
    count them); what the proxy sends the client is taken and dropped, never decrypted (TLS 1.3 needs
    nothing back from the client for its next record)."""
    records = []
    for _ in range(RECORDS):
        client.ssl.send(POST)
        records.append(client.outgoing())
    feed = iter(records)

    def step() -> None:
        h.send(next(feed))
        backend.out.clear()
        proto.data_received(RESPONSE)
        h.t.take()
        assert ok(), "the backend connection was not reused"
    return step


async def relay_step(tmp: Path) -> Step:
    """The floor: the http step's bytes (the same POST record in, the same response out) through a ``tls``
    listener, the raw relay: the same TLS session and driver, no HTTP."""
    h, client, dialer = await connected(tmp, "tls", IMAP_SNI)
    await settle()
    if SERVER_ONLY:
        backend, proto = dialer.last
        return server_step(h, client, backend, proto, lambda: len(dialer.conns) == 1)
    return round_trip(h, client, dialer, POST, RESPONSE)


async def measure(make: Callable[[Path], Any], tmp: Path, args: argparse.Namespace) -> str:
    step = await make(tmp)
    if args.callgrind is not None:
        # For valgrind --tool=callgrind: a warm-up, then exactly N steps; N minus 0 is the steps' cost.
        for _ in range(100):
            step()
        for _ in range(args.callgrind):
            step()
        return f"{args.callgrind} steps run"
    if args.count:
        c = counted(step, 50)
        return " ".join(f"{k} {v:.1f}" for k, v in c.items())
    return f"{timed(step, args.n, args.repeat):.1f} us"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="iterations per run")
    ap.add_argument("--repeat", type=int, default=7, help="runs; the best is reported")
    ap.add_argument("--count", action="store_true", help="count bytecode per iteration instead of timing")
    ap.add_argument("--pki", type=Path, help="build the test PKI here once and reuse it (callgrind: same setup)")
    ap.add_argument("--headers", help="comma-separated identity profiles of the http step (bench/peers.py: "
                    "forwarded,nginx); default: all six")
    ap.add_argument("--only", choices=("mail", "imap", "http", "relay"), help="run this path alone")
    ap.add_argument("--server-only", action="store_true",
                    help="http and relay, with --count or --callgrind N (N <= 1000): the proxy's side alone, the "
                    "client's records made up front")
    ap.add_argument("--callgrind", type=int, metavar="N",
                    help="run 100 steps then N more, untimed (callgrind: N runs minus 0 runs)")
    args = ap.parse_args()
    if args.server_only and not args.count and (args.callgrind is None or args.callgrind > RECORDS - 100):
        ap.error(f"--server-only goes with --count or --callgrind N, N <= {RECORDS - 100}")
    global PKI_DIR, HEADERS, SERVER_ONLY
    PKI_DIR = args.pki
    SERVER_ONLY = args.server_only
    HEADERS = [h for h in args.headers.split(",") if h] if args.headers else []
    configure("warning", "json")
    with tempfile.TemporaryDirectory(prefix="sniproxy-driver-bench-") as d:
        tmp = Path(d)
        for label, make in (("mail (tls relay, 1 KB each way)", mail_step),
                            ("imap (imaps NOOP and answer)", imap_step),
                            ("http (small SOAP POST + response, keep-alive)", http_step),
                            ("relay (the http step's bytes through the raw tls relay)", relay_step)):
            if args.only is not None and make.__name__ != f"{args.only}_step":
                continue
            sub = tmp / make.__name__
            sub.mkdir()
            print(f"{label}: {asyncio.run(measure(make, sub, args))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
