"""HTTPS web-service benchmark: requests/s through sniproxy (mode http) against direct to the backend.

One command: ``python bench/https_proxy.py`` (about 1 minute on 2 cores). It generates the test PKI in a temp
dir, starts the SOAP echo backend (``tests/integration/httpbackend.py``, stdlib threaded HTTP/1.1 with
keep-alive) and ``sniproxy run`` (``workers: 1``, an ``https`` listener with every identity header
profile, or those of ``--headers``) on loopback, then for each body size (a small SOAP envelope, 100 KB)
runs the same client against the backend directly (plain HTTP) and through the proxy (TLS 1.3 with the ``fort`` card):
``--conns`` keep-alive connections in one asyncio client, each posting to ``/echo`` and reading the
echoed body (h11 parses the responses), for ``--seconds`` per case, at most ``--max-requests``.
Writes ``bench/results/http.json`` (every figure) and ``http.md`` (table). Server CPU is
utime+stime from ``/proc/PID/stat`` of the proxy process during the timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h11

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniproxy.demo.conf import DemoPorts, config_dict, write_config  # noqa: E402
from sniproxy.demo.pki import build  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.httppeers import HttpBackend  # noqa: E402

HOST = "127.0.0.1"
SNI = "mss-msg-igcsante.mssante.fr"
TICK = os.sysconf("SC_CLK_TCK")
SMALL = (b'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
         b'envelope/"><soap:Body><m:Ping xmlns:m="urn:mss"><m:Id>42</m:Id></m:Ping></soap:Body></soap:Envelope>')


def _tree(root: int) -> list[int]:
    """``root`` and its descendants: ``sniproxy run`` serves from a worker process it spawns (0005)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of the proxy's supervisor and workers."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_kib(pid: int) -> int:
    """Resident memory of the proxy's supervisor and workers."""
    total = 0
    for p in _tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(ln.split()[1]) for ln in lines if ln.startswith("VmRSS:")), 0)
    return total


async def one_conn(port: int, ctx: ssl.SSLContext | None, body: bytes, deadline: float, budget: list[int],
                   done: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname=SNI if ctx else None)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = [("host", SNI), ("content-type", "text/xml; charset=utf-8"), ("soapaction", '"urn:mss:Ping"'),
               ("content-length", str(len(body)))]
    conn = h11.Connection(h11.CLIENT)
    try:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            out = conn.send(h11.Request(method="POST", target="/echo", headers=headers)) or b""
            out += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            writer.write(out)
            got = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(262144)
                    if not data:
                        raise ConnectionError("closed")
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    assert event.status_code == 200, event
                elif isinstance(event, h11.Data):
                    got += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert got == len(body)
            conn.start_next_cycle()
            done[0] += 1
    finally:
        writer.close()


async def run_case(port: int, ctx: ssl.SSLContext | None, body: bytes, conns: int, seconds: float,
                   max_requests: int) -> tuple[int, float]:
    done = [0]
    budget = [max_requests]
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(*(one_conn(port, ctx, body, deadline, budget, done) for _ in range(conns)))
    return done[0], time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--headers", default="forwarded,nginx,tomcat,envoy,rfc9440,card",
                    help="identity header profiles, comma-separated (bench/peers.py uses forwarded,nginx)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sniproxy-bench-http-"))
    pki = build(tmp / "pki")
    backend = HttpBackend(tmp / "requests.jsonl")
    port = free_port()
    cfg = config_dict(pki, DemoPorts())
    cfg["log"] = {"level": "warning", "format": "json"}
    cfg["listeners"] = [{"name": "ws", "bind": f"{HOST}:{port}", "protocol": "https",
                         "backend": f"{HOST}:{backend.port}", "sni": {SNI: "igcsante"}, "default_flow": "2bis",
                         "http": {"headers": args.headers.split(",")}}]
    path = write_config(cfg, tmp / "sniproxy.yaml")
    cmd = [sys.executable, "-O", "-m", "sniproxy", "run", "-c", str(path)]
    proxy = subprocess.Popen(cmd, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.DEVNULL)
    results: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise SystemExit("proxy did not start") from None
                time.sleep(0.1)
        ctx = ssl.create_default_context(cafile=str(pki.servers["igcsante"].chain))
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(pki.cards["fort"].chain), str(pki.cards["fort"].key))
        cases = ((f"small SOAP ({len(SMALL)} B)", SMALL), ("100 KB SOAP", SMALL + b" " * (102400 - len(SMALL))))
        for label, body in cases:
            for target, tport, tctx in (("direct", backend.port, None), ("sniproxy", port, ctx)):
                asyncio.run(run_case(tport, tctx, body, 2, 1.0, 200))   # warm-up (connections, pool)
                cpu0 = cpu_seconds(proxy.pid)
                n, elapsed = asyncio.run(run_case(tport, tctx, body, args.conns, args.seconds, args.max_requests))
                cpu = cpu_seconds(proxy.pid) - cpu0
                row = {"body": label, "body_bytes": len(body), "target": target, "requests": n,
                       "seconds": round(elapsed, 2), "requests_per_s": round(n / elapsed, 1),
                       "proxy_cpu_s": round(cpu, 2) if target == "sniproxy" else None,
                       "proxy_cpu_ms_per_request": round(1000 * cpu / n, 3) if target == "sniproxy" and n else None,
                       "proxy_rss_kib": rss_kib(proxy.pid)}
                results.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        backend.stop()
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "conns": args.conns, "seconds": args.seconds,
            "command": "python bench/https_proxy.py", "headers": args.headers,
            "backend": "tests/integration/httpbackend.py (stdlib, threaded)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["# HTTPS mode http: requests/s, direct vs through sniproxy", "",
             f"`{meta['command']}`, {meta['date']}, Python {meta['python']}, {meta['cpus']} CPUs, "
             f"{args.conns} keep-alive connections, {args.seconds:g} s per case. Backend: {meta['backend']}.", "",
             "| body | target | requests/s | proxy CPU ms/request | proxy RSS KiB |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['body']} | {r['target']} | {r['requests_per_s']} | "
                     f"{r['proxy_cpu_ms_per_request'] if r['proxy_cpu_ms_per_request'] is not None else '-'} | "
                     f"{r['proxy_rss_kib']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
