"""Where the memory of an idle mutual-TLS connection goes, in one process, without sockets.

N connections through the real driver (``ClientConnection`` + ``MailBack``, the unit tests' in-memory
harness: fake transports, a pyOpenSSL client with the RSA-2048 ``fort`` card), each through the
handshake, its backend connected (and greeted, for IMAP) and one byte relayed to the client; then the
clients are dropped and the server side is left idle. Per connection:

- C heap in use (glibc ``mallinfo2``: ``uordblks + hblkhd``): OpenSSL's SSL object, its BIOs, the
  peer certificate, plus Python objects too big for pymalloc; and RSS;
- then (``--top`` > 0) as many connections more under ``tracemalloc``: Python's allocations, with the
  top lines by size;
- then the C heap left once every connection finished.

Run from the tree to measure:  PYTHONPATH=. python bench/idle_breakdown.py --conns 2000 --listener tls
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sniproxy.demo.pki import build
from sniproxy.observability.log import configure
from tests.unit.driver.kit import FakeDialer, Harness, TlsClient, mail_config, snapshot

IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE] backend ready\r\n"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def c_heap() -> int:
    """Bytes the C allocator has handed out and not had back."""
    m = _libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def open_one(snap: Any, pki: Any, dialer: FakeDialer, listener: str, sni: str | None,
                   burst: int = 0) -> Harness:
    h = Harness(snap, listener)
    client = TlsClient(pki, sni=sni)
    client.handshake(h)
    for _ in range(5):
        await asyncio.sleep(0)
    proto = dialer.last[1]
    if listener.startswith("imap"):
        proto.data_received(IMAP_GREETING)
    proto.data_received(b"*")
    assert client.recv(h), "nothing relayed to the client"
    if burst:
        # a message fetched then one sent (64 KiB backend reads; the client's bytes in one read), then idle
        chunk = b"x" * 65536
        for _ in range(burst // len(chunk)):
            proto.data_received(chunk)
            client.recv(h)
        client.send(h, b"y" * burst)
        dialer.last[0].take()
    return h


async def main_async(args: argparse.Namespace) -> None:
    configure("error")
    tmp = Path(tempfile.mkdtemp(prefix="idle-breakdown-"))
    pki = build(tmp / "pki")
    cfg = mail_config(pki)
    cfg["limits"] = {"max_connections": 100000, "max_per_ip": 100000, "max_pending_per_ip": 100000,
                     "max_pending": 100000}
    snap = snapshot(cfg, tmp)
    dialer = FakeDialer()
    asyncio.get_running_loop().create_connection = dialer.create_connection  # type: ignore[method-assign]
    sni = None if args.listener == "tls" else "frontimap.mssante.fr"
    warm = [await open_one(snap, pki, dialer, args.listener, sni, args.burst) for _ in range(50)]
    for h in warm:
        h.conn.goodbye()
    del warm
    dialer.conns.clear()
    gc.collect()
    # C heap and RSS first, untraced: tracemalloc's own records are C heap too
    c0, r0 = c_heap(), rss_kib()
    conns = [await open_one(snap, pki, dialer, args.listener, sni, args.burst) for _ in range(args.conns)]
    await asyncio.sleep(args.wait)
    gc.collect()
    c1, r1 = c_heap(), rss_kib()
    n = len(conns)
    print(f"{n} idle connections ({args.listener}, {args.burst} bytes each way before idling): "
          f"C heap {(c1 - c0) / n / 1024:.2f} KiB each, RSS {(r1 - r0) / n:.2f} KiB each")
    print("  (C heap: glibc mallinfo2 uordblks + hblkhd; it counts Python objects over 512 bytes too)")
    if args.top:
        # then as many more, traced: Python's own allocations per connection and where they come from
        tracemalloc.start(args.frames)
        p0 = tracemalloc.get_traced_memory()[0]
        snap0 = tracemalloc.take_snapshot()
        more = [await open_one(snap, pki, dialer, args.listener, sni, args.burst) for _ in range(args.conns)]
        await asyncio.sleep(args.wait)
        gc.collect()
        p1 = tracemalloc.get_traced_memory()[0]
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        print(f"Python allocations (tracemalloc): {(p1 - p0) / n / 1024:.2f} KiB each; top lines (bytes each, "
              f"{args.frames} frame(s)):")
        for st in snap1.compare_to(snap0, "traceback" if args.frames > 1 else "lineno")[:args.top]:
            if st.size_diff <= 0:
                continue
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in st.traceback)
            print(f"  {st.size_diff / n:8.1f} B  {st.count_diff / n:5.2f} blocks  {where}")
        conns += more
        del more
    total = len(conns)
    for h in conns:
        h.conn.goodbye()
    del conns
    dialer.conns.clear()
    gc.collect()
    c2 = c_heap()
    print(f"after every connection finished: C heap {(c2 - c0) / total / 1024:.2f} KiB each left in use")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--listener", default="tls", choices=("tls", "imaps"))
    ap.add_argument("--burst", type=int, default=0,
                    help="bytes relayed each way (backend in 64 KiB reads) before going idle")
    ap.add_argument("--wait", type=float, default=2.0, help="seconds idle before measuring")
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
