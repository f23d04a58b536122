"""The Python floor of an HTTPS request: sniproxy's TLS session and uvloop, no HTTP, against sniproxy itself.

``python bench/python_floor.py`` (about 1 minute): the same small SOAP POST on 8 keep-alive mutual-TLS
connections (``bench/https_proxy.py``'s client, the ``fort`` card, TLS 1.3) through two servers on loopback,
each a process of its own running uvloop, one after the other and alternated round by round:

- ``floor``: the least a Python proxy on this stack does per request. Each client connection gets a
  ``TlsSession`` of the ``igcsante`` flow (sniproxy's own, the same OpenSSL context and verification) and one
  backend connection opened at its handshake; the client's plaintext goes to the backend as it is and the
  backend's bytes back through ``TlsSession.encrypt``. No HTTP parsing, no identity headers, no pool, no
  timers, no logging.
- ``sniproxy``: sniproxy's data path (``driver.front.ClientConnection``, the listener of ``bench/peers.py``:
  mode http, identity profiles ``forwarded,nginx``) in the same kind of process, without the supervisor.

Reports the server's CPU per request (utime+stime from ``/proc``, kernel included) for each, per round.
These are wall-clock figures on a shared machine: compare the two in the same round only.

``--callgrind N``: each server under ``valgrind --tool=callgrind`` instead, once with ``N`` requests after the
warm-up and once with none; (N run minus 0 run) / N is one request's user-space instructions (the kernel's
send/recv work is not counted), the handshakes and the start-up cancelling out. Decision 0013.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.https_proxy import HOST, SMALL, SNI, cpu_seconds, run_case  # noqa: E402
from sniproxy.demo.conf import DemoPorts, config_dict, write_config  # noqa: E402
from sniproxy.demo.pki import TestPki, build  # noqa: E402
from tests.conftest import free_port  # noqa: E402

FLOW = "igcsante"
CONNS = 8
WARMUP = 200   # requests before the measured ones (pool, caches, first-use paths)


def config(pki: TestPki, port: int, backend: int, tmp: Path) -> Path:
    """bench/peers.py's sniproxy listener (mode http, two identity profiles) on ``port``."""
    cfg = config_dict(pki, DemoPorts())
    cfg["log"] = {"level": "warning", "format": "json"}
    cfg["listeners"] = [{"name": "ws", "bind": f"{HOST}:{port}", "protocol": "https",
                         "backend": f"{HOST}:{backend}", "sni": {SNI: FLOW}, "default_flow": "2bis",
                         "http": {"headers": ["forwarded", "nginx"]}}]
    return write_config(cfg, tmp / f"floor-{port}.yaml")


# ---------------------------------------------------------------------------- the servers (--serve)
def serve(kind: str, cfg_path: Path, port: int, backend: int, exit_after: int) -> None:
    """Run one server until ``exit_after`` client connections have closed (0: until killed)."""
    import uvloop

    from sniproxy.config.load import load
    from sniproxy.driver.front import ClientConnection
    from sniproxy.observability.log import configure
    from sniproxy.runtime.snapshot import SnapshotHolder, compile_snapshot
    from sniproxy.tls.session import TlsSession

    configure("warning", "json")
    snap = compile_snapshot(load(cfg_path).config)
    runtime = snap.flows[FLOW]
    closed = [0]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def gone() -> None:
            closed[0] += 1
            if exit_after and closed[0] >= exit_after and not done.done():
                done.set_result(None)

        class Back(asyncio.Protocol):
            def __init__(self, front: Floor) -> None:
                self.front = front

            def data_received(self, data: bytes) -> None:
                self.front.from_backend(data)

            def connection_lost(self, exc: Exception | None) -> None:
                self.front.close()

        class Floor(asyncio.Protocol):
            """One client connection: TLS in and out, plaintext relayed as it is."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport
                self.tls = TlsSession(runtime)
                self.bk: Any = None
                self.pending: list[bytes] = []
                self.task: asyncio.Task[None] | None = None

            def data_received(self, data: bytes) -> None:
                tls = self.tls
                if not tls.established:
                    tls.feed(data)
                    done = tls.handshake()
                    out = tls.outgoing()
                    if out:
                        self.t.write(out)
                    if done:
                        self.task = loop.create_task(self.connect())
                    data = b""
                    if not done:
                        return
                plain, eof = tls.read(data)
                out = tls.outgoing()
                if out:
                    self.t.write(out)
                if plain:
                    if self.bk is not None:
                        self.bk.write(plain)
                    else:
                        self.pending.append(plain)
                if eof:
                    self.close()

            async def connect(self) -> None:
                bk, _ = await loop.create_connection(lambda: Back(self), HOST, backend)
                bk.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.bk = bk
                if self.pending:
                    bk.writelines(self.pending)
                    self.pending = []

            def from_backend(self, data: bytes) -> None:
                self.t.write(self.tls.encrypt(data))

            def close(self) -> None:
                self.t.close()

            def connection_lost(self, exc: Exception | None) -> None:
                if self.bk is not None:
                    self.bk.close()
                gone()

        class Counted(ClientConnection):
            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                gone()

        if kind == "floor":
            server = await loop.create_server(Floor, HOST, port)
        else:
            holder = SnapshotHolder(snap)
            server = await loop.create_server(lambda: Counted(holder, "ws"), HOST, port)
        async with server:
            await done
    uvloop.run(main())


# ---------------------------------------------------------------------------- the runs
def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("server did not start") from None
            time.sleep(0.1)


def client_ctx(pki: TestPki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.servers[FLOW].chain))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(pki.cards["fort"].chain), str(pki.cards["fort"].key))
    return ctx


def start(kind: str, cfg: Path, port: int, backend: int, exit_after: int, wrap: list[str]) -> subprocess.Popen[bytes]:
    cmd = [*wrap, sys.executable, "-O", __file__, "--serve", kind, "--config", str(cfg), "--port", str(port),
           "--backend-port", str(backend), "--exit-after", str(exit_after)]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wall(pki: TestPki, tmp: Path, backend: int, rounds: int, seconds: float) -> None:
    """CPU per request of each server, alternated round by round (noisy: a shared machine)."""
    ctx = client_ctx(pki)
    got: dict[str, list[float]] = {"floor": [], "sniproxy": []}
    for r in range(rounds):
        order = ("floor", "sniproxy") if r % 2 == 0 else ("sniproxy", "floor")
        for kind in order:
            port = free_port()
            proc = start(kind, config(pki, port, backend, tmp), port, backend, 0, [])
            try:
                wait_port(port, proc, 20)
                asyncio.run(run_case(port, ctx, SMALL, 2, 2.0, WARMUP))
                cpu0 = cpu_seconds(proc.pid)
                n, _ = asyncio.run(run_case(port, ctx, SMALL, CONNS, seconds, 200_000))
                cpu = cpu_seconds(proc.pid) - cpu0
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            ms = 1000 * cpu / n
            got[kind].append(ms)
            print(f"round {r + 1} {kind}: {n} requests, {cpu:.2f} CPU-s, {ms:.4f} ms/request, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    for kind, vals in got.items():
        print(f"{kind}: median {statistics.median(vals):.4f} ms/request over {len(vals)} rounds")
    ratio = statistics.median(got["floor"]) / statistics.median(got["sniproxy"])
    print(f"floor / sniproxy CPU per request: {ratio:.2f}")


def callgrind(pki: TestPki, tmp: Path, backend: int, n: int) -> None:
    """User-space instructions per request of each server: (n requests) minus (none), over n."""
    ctx = client_ctx(pki)
    totals: dict[tuple[str, int], int] = {}
    for kind in ("floor", "sniproxy"):
        for count in (n, 0):
            port = free_port()
            out = tmp / f"cg-{kind}-{count}.out"
            proc = start(kind, config(pki, port, backend, tmp), port, backend, CONNS,
                         ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
            try:
                wait_port(port, proc, 300)
                asyncio.run(run_case(port, ctx, SMALL, CONNS, 600.0, WARMUP + count))
                proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=10)
            summary = next(line for line in out.read_text().splitlines() if line.startswith("summary:"))
            totals[(kind, count)] = int(summary.split()[1])
            print(f"{kind} {WARMUP} + {count} requests: {totals[(kind, count)]:,} instructions", flush=True)
        per = (totals[(kind, n)] - totals[(kind, 0)]) / n
        print(f"{kind}: {per / 1000:.1f} k instructions per request", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pki", type=Path, help="build the test PKI here once and reuse it")
    ap.add_argument("--callgrind", type=int, metavar="N", help="instructions per request under callgrind instead")
    ap.add_argument("--serve", choices=("floor", "sniproxy"), help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--exit-after", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.config, args.port, args.backend_port, args.exit_after)
        return 0
    from tests.integration.httppeers import HttpBackend

    with tempfile.TemporaryDirectory(prefix="sniproxy-floor-") as d:
        tmp = Path(d)
        pki = build(args.pki or tmp / "pki")
        backend = HttpBackend(tmp / "requests.jsonl")
        try:
            if args.callgrind is not None:
                callgrind(pki, tmp, backend.port, args.callgrind)
            else:
                wall(pki, tmp, backend.port, args.rounds, args.seconds)
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
