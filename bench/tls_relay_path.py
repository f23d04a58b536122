"""Server work per 64 B ping-pong round trip and per MB of bulk through a ``tls`` listener, in one process.

The raw relay of ``bench/peers.py``'s ping-pong, download and upload rows, through the real driver over
the unit tests' in-memory transports (``tests/unit/driver/kit.py``): no socket, no other process. The
client's records are made before the measured loop (the client's encryption is not counted) and what the
proxy writes to either side is dropped unread (a write is one ``len`` call), so what runs in the loop is
the proxy's own work: the front half, the TLS session, the relay, OpenSSL.

Each client read is handed over as uvloop would: to a ``BufferedProtocol`` (``get_buffer``, the read's bytes
copied into that buffer, ``buffer_updated``), else to ``data_received`` as a bytes object copied out of a
read buffer (uvloop reads into its own buffer, then makes bytes of it). The copy into the read buffer stands
for the kernel's (``recv`` into user memory), which both paths make: so the two kinds of tree are counted
alike (decision 0014; before it the bytes were handed over ready-made, the ``--premade`` option).

- ``pingpong``: a 64 B client record -> backend, then 64 B from the backend -> client, ``--n`` times;
- ``download``: ``--n`` backend reads of ``--chunk`` bytes (uvloop reads up to 256,000) -> client;
- ``upload``: ``--n`` client reads of ``--chunk`` bytes of ciphertext -> backend.

``--callgrind`` runs this script twice under ``valgrind --tool=callgrind`` (``--n N`` and ``--n 0``, the same
set-up and pre-made records) and prints the difference in instructions per iteration (and per MB for bulk):
a figure that does not depend on the machine's load. Without it: CPU time per iteration, best of
``--repeat``.

    PYTHONPATH=. python -O bench/tls_relay_path.py pingpong --callgrind --n 2000
    PYTHONPATH=. python -O bench/tls_relay_path.py download --callgrind --n 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniproxy.demo.pki import build  # noqa: E402
from sniproxy.lifecycle.memory import fix_thresholds  # noqa: E402
from sniproxy.observability.log import configure  # noqa: E402
from tests.unit.driver.kit import IMAP_SNI, FakeDialer, Harness, TlsClient, mail_config, settle, snapshot  # noqa: E402

PING = b"p" * 64
PKI_DIR = Path(tempfile.gettempdir()) / "sniproxy-tls-relay-path-pki"


def _records(client: TlsClient, plain: bytes, n: int) -> list[bytes]:
    """``n`` client writes of ``plain``, each as the ciphertext the proxy would read."""
    out = []
    for _ in range(n):
        client.ssl.sendall(plain)
        out.append(client.outgoing())
    return out


def _reader(conn: Any, premade: bool) -> Callable[[bytes], None]:
    """What uvloop does with one client read of ``data`` (see the module's docstring)."""
    if premade:
        return cast(Callable[[bytes], None], conn.data_received)
    if hasattr(conn, "buffer_updated"):
        get_buffer, updated = conn.get_buffer, conn.buffer_updated

        def buffered(data: bytes) -> None:
            n = len(data)
            get_buffer(-1)[:n] = data      # the kernel's copy into the protocol's buffer
            updated(n)
        return buffered
    read_buf = bytearray(262144)          # uvloop's own read buffer
    view, received = memoryview(read_buf), conn.data_received

    def copied(data: bytes) -> None:
        n = len(data)
        view[:n] = data                    # the kernel's copy into uvloop's buffer
        received(bytes(view[:n]))          # uvloop's bytes of it
    return copied


async def run(what: str, n: int, chunk: int, repeat: int, make: int, tmp: Path,
              premade: bool = False) -> list[float]:
    """Set up one relaying ``tls`` connection, then run ``what`` ``n`` times (``repeat`` runs); CPU s per run."""
    pki = build(PKI_DIR)       # reused when already there: the N and 0 runs of --callgrind share it
    dialer = FakeDialer()
    asyncio.get_running_loop().create_connection = dialer.create_connection  # type: ignore[method-assign]
    h = Harness(snapshot(mail_config(pki, timeouts={"idle": 3600}), tmp), "tls")
    client = TlsClient(pki, sni=IMAP_SNI)
    client.handshake(h)
    await settle()
    backend, proto = dialer.last
    # Warm-up: one exchange each way (and the buffers the first record allocates).
    client.send(h, PING)
    proto.data_received(PING)
    client.recv(h)
    backend.take()
    # From here on the proxy's writes go nowhere.
    h.t.write = len  # type: ignore[method-assign,assignment]
    backend.write = len  # type: ignore[method-assign,assignment]
    # The client's records are made for ``make`` iterations whatever ``n`` is: the N and 0 runs of
    # --callgrind then differ by the proxy's work alone.
    total = max(make, n * repeat)
    if what == "pingpong":
        records = _records(client, PING, total)
    elif what == "upload":
        # The client's stream cut as the kernel would hand it over: ``chunk`` bytes per read.
        stream = b"".join(_records(client, b"u" * 16384, (total * chunk) // 16384 + 2))
        records = [stream[i * chunk:(i + 1) * chunk] for i in range(total)]
    else:
        records = []
    payload = b"d" * chunk
    clock = time.process_time
    times = []
    conn_in, back_in = _reader(h.conn, premade), proto.data_received
    for r in range(repeat):
        t0 = clock()
        if what == "pingpong":
            for rec in records[r * n:(r + 1) * n]:
                conn_in(rec)
                back_in(PING)
        elif what == "download":
            for _ in range(n):
                back_in(payload)
        else:
            for rec in records[r * n:(r + 1) * n]:
                conn_in(rec)
        times.append(clock() - t0)
    assert h.conn.reason is None, h.conn.reason
    return times


def callgrind(args: argparse.Namespace) -> int:
    """Instructions per iteration: ``--n N`` minus ``--n 0`` under callgrind."""
    counts = []
    for n in (args.n, 0):
        with tempfile.TemporaryDirectory(prefix="tls-relay-cg-") as d:
            out = Path(d) / "cg.out"
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-O",
                   __file__, args.what, "--n", str(n), "--chunk", str(args.chunk), "--repeat", "1",
                   "--make", str(args.n), *(["--premade"] if args.premade else [])]
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            m = re.search(r"Collected : (\d+)", res.stderr)
            assert m, res.stderr[-2000:]
            counts.append(int(m.group(1)))
            if args.keep and n:
                Path(args.keep).write_bytes(out.read_bytes())
    per = (counts[0] - counts[1]) / args.n
    line = f"{args.what}: {per:,.0f} instructions per iteration ({args.n} minus 0)"
    if args.what != "pingpong":
        line += f", {per * 1e6 / args.chunk / 1e6:,.2f} M per MB ({args.chunk} B per read)"
    print(line)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("pingpong", "download", "upload"))
    ap.add_argument("--n", type=int, default=2000, help="iterations per run")
    ap.add_argument("--chunk", type=int, default=256000, help="bytes per read, bulk (uvloop reads up to 256,000)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--make", type=int, default=0, help="client records to make at least (--callgrind sets it)")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--premade", action="store_true",
                    help="hand client reads to data_received as ready-made bytes (the figures of decision 0011)")
    ap.add_argument("--keep", help="with --callgrind: keep the N run's callgrind output here")
    args = ap.parse_args()
    if args.callgrind:
        return callgrind(args)
    configure("error")
    fix_thresholds()        # as a worker does at its start (lifecycle/worker.main): 256 KB buffers from the heap
    with tempfile.TemporaryDirectory(prefix="tls-relay-path-") as d:
        times = asyncio.run(run(args.what, args.n, args.chunk, args.repeat, args.make, Path(d), args.premade))
    if args.n:
        best = min(times) / args.n * 1e6
        unit = f"us per iteration (best of {args.repeat})"
        extra = f", {args.chunk / 1e6 / (min(times) / args.n):,.0f} MB per CPU-s" if args.what != "pingpong" else ""
        print(f"{args.what}: {best:.2f} {unit}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
