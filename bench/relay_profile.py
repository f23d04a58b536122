"""Server CPU per record of a logged-in IMAP session, through the real driver in one process.

One ``imaps`` connection through the unit tests' in-memory harness (fake transports, a pyOpenSSL client
with the ``fort`` card), greeted by a fake backend, then ``--rounds`` times a small exchange:
client ``aN NOOP`` (one TLS record) -> backend; backend ``* 3 EXISTS`` / ``* 0 RECENT`` / ``aN OK``
(one read) -> client; and every ``--fetch-every`` rounds a FETCH whose answer carries a 2,000-byte
literal. Only the driver's calls are timed (CPU time of this process around ``data_received`` on the
client and the backend sides): the client's own encryption and decryption are outside. ``--profile``
prints the cProfile of those calls instead (top by own time).

    PYTHONPATH=. python -O bench/relay_profile.py --rounds 20000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sniproxy.demo.pki import build
from sniproxy.observability.log import configure
from tests.unit.driver.kit import IMAP_SNI, FakeDialer, Harness, TlsClient, mail_config, snapshot

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] backend ready\r\n"
LITERAL = b"x" * 1998 + b"\r\n"


async def session(rounds: int, fetch_every: int, prof: cProfile.Profile | None) -> tuple[list[int], list[int]]:
    """CPU ns of each client record and of each backend read, as the driver handled them."""
    tmp = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    pki = build(tmp / "pki")
    dialer = FakeDialer()
    asyncio.get_running_loop().create_connection = dialer.create_connection  # type: ignore[method-assign]
    h = Harness(snapshot(mail_config(pki, timeouts={"idle": 3600}), tmp), "imaps")
    client = TlsClient(pki, sni=IMAP_SNI)
    client.handshake(h)
    for _ in range(5):
        await asyncio.sleep(0)
    backend, proto = dialer.last
    proto.data_received(GREETING)
    assert client.recv(h).startswith(b"* OK")
    to_backend: list[int] = []
    to_client: list[int] = []
    clock = time.process_time_ns
    for n in range(rounds):
        fetch = fetch_every and n % fetch_every == 0
        cmd = f"a{n} FETCH 1 BODY[]\r\n" if fetch else f"a{n} NOOP\r\n"
        client.ssl.sendall(cmd.encode())
        record = client.outgoing()
        if fetch:
            answer = (b"* 1 FETCH (BODY[] {2000}\r\n" + LITERAL + b")\r\n" + f"a{n} OK FETCH done\r\n".encode())
        else:
            answer = f"* 3 EXISTS\r\n* 0 RECENT\r\na{n} OK NOOP completed\r\n".encode()
        if prof is not None:
            prof.enable()
        t0 = clock()
        h.send(record)
        t1 = clock()
        proto.data_received(answer)
        t2 = clock()
        if prof is not None:
            prof.disable()
        to_backend.append(t1 - t0)
        to_client.append(t2 - t1)
        assert backend.take() == cmd.encode()
        client.recv(h)            # outside the timed calls: the client's decryption is not the proxy's
    h.conn.goodbye()
    return to_backend, to_client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--fetch-every", type=int, default=10, help="one FETCH with a literal every N rounds (0: none)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    configure("error")
    prof = cProfile.Profile() if args.profile else None
    up, down = asyncio.run(session(args.rounds, args.fetch_every, prof))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    half = len(up) // 10          # the first tenth warms up
    up, down = up[half:], down[half:]
    print(f"client record -> backend: mean {statistics.fmean(up) / 1000:.2f} us CPU, "
          f"median {statistics.median(up) / 1000:.2f} us ({len(up)} records)")
    print(f"backend read -> client:   mean {statistics.fmean(down) / 1000:.2f} us CPU, "
          f"median {statistics.median(down) / 1000:.2f} us ({len(down)} reads, 1 in {args.fetch_every} "
          "a FETCH with a 2,000-byte literal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
