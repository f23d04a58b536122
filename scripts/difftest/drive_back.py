"""Driver-level differential: whole transcripts through ClientConnection + HttpBack (tests/unit/driver/kit.py's
in-memory harness: real TLS client with a card, fake backend transports), one build per process.

    PYTHONPATH=TREE python drive_back.py CASES.pkl PKI_DIR > OUT
"""
from __future__ import annotations

import asyncio
import pickle
import re
import sys
import tempfile
import time
from pathlib import Path

from sniproxy.compiled import http_build
from sniproxy.demo.pki import build
from sniproxy.driver import http_pool
from sniproxy.driver.shared import LIVE, OBSERVERS, Drain
from tests.unit.driver.kit import MSG, FakeDialer, Harness, TlsClient, https_config, settle, snapshot

_SESSION = re.compile(rb"(ssl_session_id: )[0-9A-Fa-f]+")
KEEP = ("mode", "reason", "detail", "statuses", "requests", "stripped_headers", "backend_connections")


def canon_event(ev: dict) -> str:
    return repr({k: ev.get(k) for k in KEEP})


async def one(snap, pki, case, out: list[str]) -> None:
    kind, client_chunks, responses, err, card = case
    loop = asyncio.get_running_loop()
    fake = FakeDialer()
    if err is not None:
        fake.error = err
    if kind == "hold":
        fake.hold = asyncio.Event()
    loop.create_connection = fake.create_connection  # type: ignore[method-assign]
    seen: list[dict] = []
    OBSERVERS.append(seen.append)
    try:
        h = Harness(snap, "https")
        client = TlsClient(pki, card=card, sni=MSG)
        client.handshake(h)
        ri = 0
        for chunk in client_chunks:
            if not client.closed and not h.t.closed:
                client.send(h, chunk)
            await settle()
            out.append("C<" + repr(client.recv(h)))
            # every backend connection made so far: what it got, then the next scripted response
            for n, (bt, proto) in enumerate(fake.conns):
                got = _SESSION.sub(rb"\1X", bt.take())
                if got:
                    out.append(f"B{n}<" + repr(got))
            while ri < len(responses) and fake.conns:
                bt, proto = fake.conns[-1]
                if bt.closed:
                    break
                for piece in responses[ri]:
                    if piece == b"<EOF>":
                        proto.eof_received()
                    elif not bt.closed:
                        proto.data_received(piece)
                ri += 1
                await settle()
                out.append("C<" + repr(client.recv(h)) + f" closed={client.closed} bclosed={bt.closed}")
                for n, (bt2, _) in enumerate(fake.conns):
                    got = _SESSION.sub(rb"\1X", bt2.take())
                    if got:
                        out.append(f"B{n}<" + repr(got))
        if kind == "hold":
            await asyncio.sleep(0.5)
            out.append("C<" + repr(client.recv(h)) + f" closed={client.closed}")
        if not client.closed and not h.t.closed:
            client.close_notify(h)
        await settle()
        out.append("C<" + repr(client.recv(h)))
        out.append("events " + " ".join(canon_event(e) for e in seen))
    except Exception as e:   # the harness itself failing (the driver catches its own)
        out.append(f"EXC {type(e).__name__}: {e}")
    finally:
        for conn in list(LIVE):
            conn.goodbye()
        OBSERVERS.remove(seen.append)
        Drain.active = False
        http_pool._POOLS.clear()


async def main() -> None:
    cases = pickle.load(open(sys.argv[1], "rb"))
    pki = build(Path(sys.argv[2]))
    tmp = Path(tempfile.mkdtemp())
    snaps = {}
    for name, http in [("strict", None), ("optional", {"card_required_paths": ["/api"]}), ("hold", None)]:
        d = tmp / name
        d.mkdir()
        extra = {"timeouts": {"connect": 0.2}} if name == "hold" else {}
        snaps[name] = snapshot(https_config(pki, http=http, client_auth="optional" if name == "optional" else "required",
                                            **extra), d)
    print("# build", http_build(), file=sys.stderr)
    t0 = time.monotonic()
    for i, case in enumerate(cases):
        out: list[str] = []
        snap = snaps["hold"] if case[0] == "hold" else snaps["optional" if case[4] is None else "strict"]
        await one(snap, pki, case, out)
        print("drv", i, " | ".join(out))
    print("# %d cases in %.1f s" % (len(cases), time.monotonic() - t0), file=sys.stderr)


if __name__ == "__main__":
    import uvloop
    uvloop.run(main())
