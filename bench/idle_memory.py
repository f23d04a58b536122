"""Memory per idle mutual-TLS connection through sniproxy, for one or more source trees side by side.

N TLS 1.3 connections with the RSA-2048 ``fort`` card through a ``protocol: tls`` listener (one worker,
``-O``, log level warning) to bench/run.py's raw backend (``hold``: sends b"*", then nothing), each read
to its first byte and left idle; the figure is the server's RSS delta (supervisor + worker) / N, after 50
warm-up connections, on a freshly started server each round (bench/run.py's ``memory()``, the same
measure as bench/peers.py's idle block). Trees are interleaved and their order alternates every round,
so that ``--src /work/main,.`` compares main and a branch in one sitting. ``--distinct-cards``: each
connection presents its own card (the ``fort`` card re-issued under a new serial number by the same
intermediate), where by default every connection presents the same one.

    python bench/idle_memory.py --src /work/main,/work/wt-i16-idle --conns 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as core


def distinct_cards(pki: Any, n: int, dest: Path) -> list[ssl.SSLContext]:
    """``n`` client contexts, each with its own re-issue of the ``fort`` card (same key, new serial)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    leaf = x509.load_pem_x509_certificate(pki.cards["fort"].cert.read_bytes())
    auth = pki.authorities["igc-sante-fort-pp"]
    inter_pem = auth.intermediates[0].read_bytes()
    ca_key = serialization.load_pem_private_key(auth.intermediate_keys[0].read_bytes(), None)
    dest.mkdir(parents=True, exist_ok=True)
    ctxs = []
    for i in range(n):
        b = (x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(leaf.issuer)
             .public_key(leaf.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc))
        for ext in leaf.extensions:
            b = b.add_extension(ext.value, ext.critical)
        cert = b.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        chain = dest / f"card-{i}.pem"
        chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + inter_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(pki.authorities["igc-cps-2bis"].roots[0]))
        ctx.load_cert_chain(str(chain), str(pki.cards["fort"].key))
        ctxs.append(ctx)
    return ctxs


async def _idle_each(port: int, ctxs: list[ssl.SSLContext], limit_s: float, on_ready: Any) -> dict[str, Any]:
    """bench/run.py's ``_idle_conns`` with one client context per connection."""
    sem = asyncio.Semaphore(32)
    writers: list[asyncio.StreamWriter] = []
    errors: dict[str, int] = {}

    async def one(ctx: ssl.SSLContext) -> None:
        async with sem:
            try:
                r, w = await asyncio.open_connection(core.HOST, port, ssl=ctx, limit=4096)
                writers.append(w)
                if await r.readexactly(1) != b"*":
                    raise ValueError("bad first byte")
            except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    tasks = [asyncio.ensure_future(one(c)) for c in ctxs]
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for p in pending:
        p.cancel()
    established = len(ctxs) - sum(errors.values()) - len(pending)
    await asyncio.sleep(1.0)
    res: dict[str, Any] = on_ready(established)
    res.update(established=established, errors=errors, timed_out=len(pending))
    for w in writers:
        w.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 10)
    return res


def memory_distinct(t: Any, pki: Any, ctxs: list[ssl.SSLContext]) -> dict[str, Any]:
    """bench/run.py's ``memory()`` (50 warm-up connections with the shared card, then the baseline)."""
    asyncio.run(core._idle_conns(t.ports["hold"], core.client_ctx(pki, "fort"), 50, 30, 16, lambda e: {}))
    time.sleep(1.0)
    t.pids = core._descendants(t.pids[0])
    base = t.rss()

    def on_ready(established: int) -> dict[str, Any]:
        after = t.rss()
        return {"rss_before_kib": base, "rss_after_kib": after,
                "kib_per_conn": round((after - base) / established, 2) if established else None}

    return asyncio.run(_idle_each(t.ports["hold"], ctxs, 120, on_ready))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=".", help="comma-separated source trees to run sniproxy from")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--distinct-cards", action="store_true", help="one card per connection (default: one for all)")
    ap.add_argument("--json", type=Path, help="write the raw rounds here")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        core.backend_entry(args.backend, 1)
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))   # inherited by the server
    from sniproxy.demo import pki as testpki

    srcs = [str(Path(s).resolve()) for s in args.src.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="sniproxy-idle-"))
    pki = testpki.build(tmp / "pki")
    bports = dict(zip(("hold", "source", "sink", "stats"), core.free_ports(4), strict=True))
    backend = subprocess.Popen([sys.executable, __file__, "--backend",
                                ",".join(f"{k}={v}" for k, v in bports.items())], stdin=subprocess.PIPE)

    def tweak(d: dict[str, Any]) -> None:
        d["limits"] = {"max_connections": 20000, "max_per_ip": 20000}   # all from 127.0.0.1

    ctxs = distinct_cards(pki, args.conns, tmp / "cards") if args.distinct_cards else None
    core.SNIPROXY_PY_FLAGS = ["-O"]
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in srcs}
    try:
        core.wait_listen(bports["hold"], backend)  # type: ignore[arg-type]
        for rnd in range(args.rounds):
            order = srcs if rnd % 2 == 0 else srcs[::-1]
            for src in order:
                t = core.sniproxy_target(f"s{srcs.index(src)}", 1, pki, bports, tmp, keys=("hold",), tweak=tweak)
                # `python -m` puts the working directory first on sys.path: run from the tree itself
                t.cmd = ["env", "-C", src, f"PYTHONPATH={src}", *t.cmd]
                t.start()
                try:
                    r = (memory_distinct(t, pki, ctxs) if ctxs is not None
                         else core.memory(t, pki, args.conns, timeout=120))
                finally:
                    t.stop()
                r["load1"] = os.getloadavg()[0]
                rows[src].append(r)
                print(f"round {rnd} {src}: {r['kib_per_conn']} KiB/conn, established {r['established']}, "
                      f"rss {r['rss_before_kib']} -> {r['rss_after_kib']} KiB, load {r['load1']:.2f}", flush=True)
                time.sleep(1.0)
    finally:
        core.stop_backend(backend)
        shutil.rmtree(tmp, ignore_errors=True)
    for src, rs in rows.items():
        vals = [r["kib_per_conn"] for r in rs if r["kib_per_conn"] is not None]
        if vals:
            print(f"{src}: median {statistics.median(vals):.1f} KiB per idle connection "
                  f"({min(vals):.1f} to {max(vals):.1f}, {len(vals)} rounds of {args.conns})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
