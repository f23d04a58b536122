"""Side by side on the data path: sniproxy against HAProxy, nginx and stunnel4, per server CPU-second, one command.

``python bench/peers.py [--quick] [--rounds N] [--out bench/results/peers.md]`` starts, on 127.0.0.1 with free
ports, with the same test PKI (``sniproxy.demo.pki.build``, cached in ``bench/.cache/pki``), the same backends
and the same TLS policy (TLS 1.3, mutual TLS with the RSA-2048 ``fort`` card, same server certificate per
figure), one worker / process / thread each:

- ``sniproxy``: ``python -O -m sniproxy run`` (``workers: 1``), ``protocol: tls`` listeners and one ``https``
  listener (``http.headers: [forwarded, nginx]``);
- ``haproxy``: ``nbthread 1``, ``mode tcp`` + ``ssl`` frontends and one ``mode http`` + ``ssl`` frontend that
  adds the same identity headers (``X-SSL-Client-*``, ``X-Forwarded-*``, ``Forwarded``);
- ``nginx``: ``worker_processes 1``, ``stream`` ssl servers (``libnginx-mod-stream``) and one ``http`` ssl
  server (``proxy_pass`` with upstream keep-alive, the same identity headers);
- ``stunnel``: stunnel4 (one thread per connection), raw TLS only.

Every server is pinned to CPU 0 (``taskset``); the bench process, its load generators and the backends run
on CPU 1. Figures are per server CPU-second (utime+stime from ``/proc/PID/stat``, summed over the server's
processes). Each figure is one block; within a block every peer runs once per round, the order rotated every
round; ``--rounds`` rounds give min/median/max. The 1-minute load average and the CPU used by processes
outside the bench are recorded at each block. Every load loop is bounded in count and time; every process
started is stopped at the end, also on Ctrl-C or an exception. Writes the table (``--out``, Markdown) and
every raw round (same name, ``.json``). See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = 0, 1
HAPROXY = "/usr/sbin/haproxy"
NGINX = "/usr/sbin/nginx"
NGINX_MODULES = Path("/usr/lib/nginx/modules")
BACKEND_LIFE = 3600.0             # the raw backend exits by itself after this (or when our stdin closes)
PEERS = ("sniproxy", "haproxy", "nginx", "stunnel")
LABELS = {"sniproxy": "sniproxy", "haproxy": "HAProxy", "nginx": "nginx", "stunnel": "stunnel"}
RAW_KEYS = ("hold", "source", "sink", "echo")      # raw TLS listeners, one per backend port of bench/run.py
SNIPROXY_HTTP_HEADERS = ["forwarded", "nginx"]      # what haproxy/nginx are configured to add too
PING = b"p" * 64


def _load(name: str, path: Path) -> ModuleType:
    """Another bench script as a module (its code is reused, not copied)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod          # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


crl = _load("bench_crl", BENCH_DIR / "crl.py")          # HAProxy versions, ForeignCpu, percentiles
core = crl.core                                          # bench/run.py: backend, /proc, targets, transfer, memory
https = _load("bench_https", BENCH_DIR / "https_proxy.py")   # SOAP bodies, h11 keep-alive client, SOAP backend
BODIES = {"small": https.SMALL, "100k": https.SMALL + b" " * (102400 - len(https.SMALL))}


# --------------------------------------------------------------------------- servers
def pinned(cmd: list[str]) -> list[str]:
    """``taskset`` execs the server: the pid we hold is the server's own."""
    return ["taskset", "-c", str(SERVER_CPU), *cmd] if (os.cpu_count() or 1) > 1 else cmd


def sniproxy_peer(pki: Any, bports: dict[str, int], http_port: int, tmp: Path) -> Any:
    (https_port,) = core.free_ports(1)

    def tweak(d: dict[str, Any]) -> None:
        d["log"] = {"level": "warning", "format": "json"}
        # every bench connection comes from 127.0.0.1: the per-address limit (1000) would refuse half of the
        # idle connections, and the C peers have no such limit configured
        d["limits"] = {"max_connections": 20000, "max_per_ip": 20000}
        d["listeners"].append({"name": "ws", "bind": f"{HOST}:{https_port}", "protocol": "https",
                               "backend": f"{HOST}:{http_port}", "sni": {https.SNI: "igcsante"},
                               "default_flow": "2bis", "http": {"headers": SNIPROXY_HTTP_HEADERS}})

    core.SNIPROXY_PY_FLAGS = ["-O"]
    t = core.sniproxy_target("sniproxy", 1, pki, bports, tmp, keys=RAW_KEYS, tweak=tweak)
    t.ports["https"] = https_port
    t.cmd = pinned(t.cmd)
    return t


def _pem_bundle(pki: Any, flow: str, dest: Path) -> Path:
    """HAProxy's ``crt``: the server chain and its key in one file."""
    dest.write_bytes(pki.servers[flow].chain.read_bytes() + pki.servers[flow].key.read_bytes())
    dest.chmod(0o600)
    return dest


def haproxy_peer(pki: Any, bports: dict[str, int], http_port: int, tmp: Path) -> Any:
    ports = dict(zip(("https", *RAW_KEYS), core.free_ports(1 + len(RAW_KEYS)), strict=True))
    ca = core.card_cafile(pki, tmp / "cards-ca.pem")
    raw_crt, web_crt = _pem_bundle(pki, "2bis", tmp / "haproxy-2bis.pem"), _pem_bundle(pki, "igcsante",
                                                                                       tmp / "haproxy-igc.pem")
    tls = f"ssl ca-file {ca} verify required ssl-min-ver TLSv1.3"
    # tune.maxrewrite: room kept in the 16 KB buffer for the identity headers; at the default (1 KB) the
    # ~2.5 KB of them cannot be added to a request whose body already fills the buffer (HAProxy answers 500)
    lines = ["global", "    nbthread 1", "    maxconn 8000", "    tune.maxrewrite 4096",
             "defaults", "    timeout connect 5s", "    timeout client 300s", "    timeout server 300s",
             "frontend https", "    mode http", f"    bind {HOST}:{ports['https']} {tls} crt {web_crt}",
             "    option forwardfor",
             "    http-request set-header X-SSL-Client-Verify %[ssl_c_verify]",
             "    http-request set-header X-SSL-Client-S-DN %{+Q}[ssl_c_s_dn]",
             "    http-request set-header X-SSL-Client-I-DN %{+Q}[ssl_c_i_dn]",
             "    http-request set-header X-SSL-Client-Serial %[ssl_c_serial,hex]",
             "    http-request set-header X-SSL-Client-Cert %[ssl_c_der,base64]",
             "    http-request set-header X-Forwarded-Proto https",
             "    http-request set-header X-Forwarded-Host %[req.hdr(host)]",
             '    http-request set-header Forwarded "for=%[src];proto=https;host=%[req.hdr(host)]"',
             "    default_backend soap",
             "backend soap", "    mode http", "    http-reuse always", f"    server b1 {HOST}:{http_port}"]
    for k in RAW_KEYS:
        lines += [f"frontend tls-{k}", "    mode tcp", f"    bind {HOST}:{ports[k]} {tls} crt {raw_crt}",
                  f"    default_backend raw-{k}",
                  f"backend raw-{k}", "    mode tcp", f"    server b1 {HOST}:{bports[k]}"]
    cfg = tmp / "haproxy.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    return core.Target("haproxy", pinned([HAPROXY, "-db", "-f", str(cfg)]), ports, tmp / "haproxy.log")


def nginx_peer(pki: Any, bports: dict[str, int], http_port: int, tmp: Path) -> Any:
    ports = dict(zip(("https", *RAW_KEYS), core.free_ports(1 + len(RAW_KEYS)), strict=True))
    ca = core.card_cafile(pki, tmp / "cards-ca.pem")
    d = tmp / "nginx"
    d.mkdir(exist_ok=True)

    def tls(flow: str) -> str:
        s = pki.servers[flow]
        return (f"ssl_certificate {s.chain}; ssl_certificate_key {s.key}; ssl_client_certificate {ca}; "
                "ssl_verify_client on; ssl_verify_depth 4; ssl_protocols TLSv1.3;")

    hdr = {"X-SSL-Client-Verify": "$ssl_client_verify", "X-SSL-Client-S-DN": "$ssl_client_s_dn",
           "X-SSL-Client-I-DN": "$ssl_client_i_dn", "X-SSL-Client-Serial": "$ssl_client_serial",
           "X-SSL-Client-Cert": "$ssl_client_escaped_cert", "X-Forwarded-For": "$proxy_add_x_forwarded_for",
           "X-Forwarded-Proto": "https", "X-Forwarded-Host": "$host",
           "Forwarded": '"for=$remote_addr;proto=https;host=$host"', "Host": "$host", "Connection": '""'}
    stream = "\n".join(f"    server {{ listen {HOST}:{ports[k]} ssl; {tls('2bis')} proxy_pass {HOST}:{bports[k]}; "
                       "proxy_timeout 300s; }" for k in RAW_KEYS)
    conf = f"""load_module {NGINX_MODULES / "ngx_stream_module.so"};
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {d / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 9000; }}
http {{
    access_log off;
    client_body_temp_path {d / "body"}; proxy_temp_path {d / "proxy"}; fastcgi_temp_path {d / "fcgi"};
    uwsgi_temp_path {d / "uwsgi"}; scgi_temp_path {d / "scgi"};
    upstream soap {{ server {HOST}:{http_port}; keepalive 16; keepalive_requests 10000000; }}
    server {{
        listen {HOST}:{ports["https"]} ssl;
        {tls("igcsante")}
        keepalive_requests 10000000;
        keepalive_timeout 300s;
        client_max_body_size 10m;
        client_body_buffer_size 128k;
        location / {{
            proxy_pass http://soap;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
{chr(10).join(f"            proxy_set_header {k} {v};" for k, v in hdr.items())}
        }}
    }}
}}
stream {{
{stream}
}}
"""
    cfg = d / "nginx.conf"
    cfg.write_text(conf)
    cmd = [NGINX, "-e", "stderr", "-p", str(d), "-c", str(cfg)]
    return core.Target("nginx", pinned(cmd), ports, tmp / "nginx.log")


def stunnel_peer(pki: Any, bports: dict[str, int], tmp: Path, binary: str) -> Any:
    t = core.stunnel_target(pki, bports, tmp, binary, keys=RAW_KEYS, extra=("sslVersionMin = TLSv1.3",))
    t.cmd = pinned(t.cmd)
    return t


def cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


# --------------------------------------------------------------------------- checks
def http_ctx(pki: Any, card: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE   # the server certificate is not what is measured; the card is
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(pki.cards[card].chain), str(pki.cards[card].key))
    return ctx


def one_post(port: int, pki: Any, card: str) -> dict[str, Any]:
    """One small SOAP POST with ``card``: the status line (or the error)."""
    req = (f"POST /echo HTTP/1.1\r\nHost: {https.SNI}\r\nContent-Type: text/xml\r\nContent-Length: "
           f"{len(BODIES['small'])}\r\nX-SSL-Client-S-DN: forged\r\n\r\n").encode() + BODIES["small"]
    try:
        with socket.create_connection((HOST, port), timeout=5) as raw, \
                http_ctx(pki, card).wrap_socket(raw, server_hostname=https.SNI) as s:
            s.sendall(req)
            data = s.recv(65536)
            return {"tls": s.version(), "status": data.split(b"\r\n", 1)[0].decode(errors="replace")}
    except (OSError, ssl.SSLError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def check_https(t: Any, pki: Any, backend: Any) -> dict[str, Any]:
    """fort gets 200 and the backend sees the card's subject (not the forged one); unknown-ca never reaches it."""
    n0 = len(backend.requests())
    fort = one_post(t.ports["https"], pki, "fort")
    time.sleep(0.2)
    seen = backend.requests()[n0:]
    dn = [v for r in seen for k, v in r["headers"] if k.lower() == "x-ssl-client-s-dn"]
    fort["backend_s_dn"] = dn
    n1 = len(backend.requests())
    bad = one_post(t.ports["https"], pki, "unknown-ca")
    time.sleep(0.2)
    bad["reached_backend"] = len(backend.requests()) > n1
    ok = (fort.get("status", "").startswith("HTTP/1.1 200") and fort.get("tls") == "TLSv1.3"
          and len(dn) == 1 and "forged" not in dn[0] and not bad["reached_backend"]
          and not bad.get("status", "").startswith("HTTP/1.1 200"))
    return {"fort": fort, "unknown-ca": bad, "ok": ok}


# --------------------------------------------------------------------------- load
def http_client_entry(spec_json: str) -> None:
    """One load process: ``conns`` keep-alive connections (bench/https_proxy.py's h11 client), bounded."""
    spec = json.loads(spec_json)
    with contextlib.suppress(ImportError):
        import uvloop
        uvloop.install()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(spec["cert"], spec["key"])
    body = BODIES[spec["body"]]
    done, budget = [0], [spec["max_requests"]]
    r0 = resource.getrusage(resource.RUSAGE_SELF)

    async def go() -> list[Any]:
        deadline = time.monotonic() + spec["seconds"]
        return list(await asyncio.gather(*(https.one_conn(spec["port"], ctx, body, deadline, budget, done)
                                           for _ in range(spec["conns"])), return_exceptions=True))

    t0 = time.monotonic()
    outs = asyncio.run(go())
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    errors = [f"{type(o).__name__}: {o}"[:200] for o in outs if isinstance(o, BaseException)]
    print(json.dumps({"requests": done[0], "wall_s": wall, "errors": errors,
                      "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}))


def http_measure(t: Any, pki: Any, body: str, conns: int, procs: int, seconds: float,
                 max_requests: int, backend_pid: int | None = None) -> dict[str, Any]:
    """``procs`` client processes sharing ``conns`` connections; requests per server CPU-second.

    The client's and the backend's CPU are recorded too: they share CPU 1 and bound the wall rate."""
    card = pki.cards["fort"]
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    specs = [json.dumps({"port": t.ports["https"], "cert": str(card.chain), "key": str(card.key), "body": body,
                         "conns": n, "seconds": seconds, "max_requests": max_requests // procs}) for n in per if n]
    bpids = [backend_pid] if backend_pid else []
    c0, b0, w0 = t.cpu(), core.cpu_seconds(bpids), time.monotonic()
    running = [subprocess.Popen([sys.executable, __file__, "--http-client", s], stdout=subprocess.PIPE, text=True)
               for s in specs]
    outs: list[dict[str, Any]] = []
    try:
        for p in running:
            out, _ = p.communicate(timeout=seconds + 30)
            with contextlib.suppress(ValueError):
                outs.append(json.loads(out))
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    wall, cpu, bcpu = time.monotonic() - w0, t.cpu() - c0, core.cpu_seconds(bpids) - b0
    n = sum(o["requests"] for o in outs)
    client_cpu = sum(o["cpu_s"] for o in outs)
    load_wall = max((o["wall_s"] for o in outs), default=wall)
    errors = [e for o in outs for e in o["errors"]]
    return {"ok": n > 0 and not errors and len(outs) == len(specs), "requests": n, "errors": errors[:5],
            "wall_s": round(load_wall, 3), "server_cpu_s": round(cpu, 3), "client_cpu_s": round(client_cpu, 3),
            "requests_per_s": round(n / load_wall, 1) if load_wall else None,
            "requests_per_server_cpu_s": round(n / cpu, 1) if cpu else None,
            "server_util": round(cpu / load_wall, 3) if load_wall else None,
            "client_cpu_ms_per_request": round(1000 * client_cpu / n, 3) if n else None,
            "backend_cpu_s": round(bcpu, 3) if bpids else None,
            "backend_cpu_ms_per_request": round(1000 * bcpu / n, 3) if bpids and n else None}


def pingpong(port: int, ctx: ssl.SSLContext | None, count: int, seconds: float, t: Any | None) -> dict[str, Any]:
    """64 B out, 64 B back, ``count`` times on one connection (at most ``seconds``): latency and server CPU."""
    lat: list[float] = []
    try:
        with socket.create_connection((HOST, port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s: socket.socket = ctx.wrap_socket(raw) if ctx else raw
            for _ in range(200):                                   # warm-up: handshake, buffers, caches
                s.sendall(PING)
                got = 0
                while got < len(PING):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += len(chunk)
            c0 = t.cpu() if t else 0.0
            deadline = time.monotonic() + seconds
            clock = time.perf_counter_ns
            while len(lat) < count and time.monotonic() < deadline:
                t0 = clock()
                s.sendall(PING)
                got = 0
                while got < len(PING):
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    got += len(chunk)
                lat.append((clock() - t0) / 1000)
            cpu = t.cpu() - c0 if t else None
            if ctx:
                s.close()
    except (OSError, ssl.SSLError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "round_trips": len(lat)}
    n = len(lat)
    return {"ok": n > 0, "round_trips": n, "p50_us": crl._pct(lat, 50), "p99_us": crl._pct(lat, 99),
            "mean_us": round(statistics.fmean(lat), 2) if lat else None,
            "server_cpu_s": round(cpu, 3) if cpu is not None else None,
            "server_cpu_us_per_rt": round(1e6 * cpu / n, 2) if cpu is not None and n else None}


# --------------------------------------------------------------------------- blocks
@dataclass
class Figure:
    key: str
    label: str
    higher_is_better: bool
    fmt: str = "{:,.0f}"


FIGURES = [
    Figure("https_small", "HTTPS ~200 B SOAP POST, 8 keep-alive conns: requests per server CPU-s", True),
    Figure("https_100k", "HTTPS 100 KB POST: requests per server CPU-s", True),
    Figure("pp_p50_added", "64 B ping-pong, one TLS conn: added p50 latency, µs over direct", False),
    Figure("pp_p99_added", "same: added p99 latency, µs over direct", False),
    Figure("pp_cpu_us", "same: server CPU µs per round trip", False, "{:,.1f}"),
    Figure("down", "download through raw TLS: MB per server CPU-s", True),
    Figure("up", "upload through raw TLS: MB per server CPU-s", True),
    Figure("idle", "idle TLS connections: KiB each (RSS delta / connections)", False, "{:,.1f}"),
]


class Bench:
    """The blocks, their rounds and what was recorded around each."""

    def __init__(self, targets: dict[str, Any], rounds: int) -> None:
        self.targets = targets
        self.rounds = rounds
        self.raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self.foreign = crl.ForeignCpu()

    def block(self, name: str, names: list[str], run: Any) -> None:
        """Each peer in ``names`` once per round, the order rotated every round."""
        info: dict[str, Any] = {"load1_start": round(os.getloadavg()[0], 2),
                                "start": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "orders": []}
        self.foreign.mark(f"{name}-before")
        rows = self.raw.setdefault(name, {})
        for r in range(self.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            info["orders"].append(order)
            for n in order:
                res = run(n)
                res["round"] = r
                res["load1"] = round(os.getloadavg()[0], 2)
                rows.setdefault(n, []).append(res)
                print(f"{name} round {r} {n}: {json.dumps(res)[:400]}", flush=True)
        info["load1_end"] = round(os.getloadavg()[0], 2)
        info["foreign_cpu"] = self.foreign.mark(name)
        self.blocks[name] = info


def _vals(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get("ok", True) and r.get(key) is not None]


def _spread(vals: list[float]) -> dict[str, Any] | None:
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """figure -> peer -> min/median/max over the rounds."""
    out: dict[str, dict[str, Any]] = {f.key: {} for f in FIGURES}
    src = {"https_small": ("https_small", "requests_per_server_cpu_s"),
           "https_100k": ("https_100k", "requests_per_server_cpu_s"),
           "pp_cpu_us": ("pingpong", "server_cpu_us_per_rt"),
           "down": ("download", "MB_per_server_cpu_s"), "up": ("upload", "MB_per_server_cpu_s"),
           "idle": ("idle", "kib_per_conn")}
    for fig, (block, key) in src.items():
        for peer, rows in raw.get(block, {}).items():
            if peer != "direct":
                out[fig][peer] = _spread(_vals(rows, key))
    # added latency: each peer's round against the direct run of the same round
    pp = raw.get("pingpong", {})
    direct = {r["round"]: r for r in pp.get("direct", []) if r.get("ok")}
    for fig, key in (("pp_p50_added", "p50_us"), ("pp_p99_added", "p99_us")):
        for peer, rows in pp.items():
            if peer == "direct":
                continue
            vals = [r[key] - direct[r["round"]][key] for r in rows
                    if r.get("ok") and r["round"] in direct and r.get(key) is not None]
            out[fig][peer] = _spread([round(v, 2) for v in vals])
    return out


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in FIGURES:
        row = summary[f.key]
        mine = row.get("sniproxy")
        others = {p: v["median"] for p, v in row.items() if p != "sniproxy" and v}
        if not mine or not others:
            out[f.key] = {"ratio": None}
            continue
        best = max(others, key=lambda p: others[p]) if f.higher_is_better else min(others, key=lambda p: others[p])
        out[f.key] = {"best": best, "ratio": round(mine["median"] / others[best], 3) if others[best] else None}
    return out


# --------------------------------------------------------------------------- report
def versions(stunnel: str) -> dict[str, str]:
    v = dict(crl.versions())
    v["stunnel"] = core.versions(stunnel)["stunnel"]
    ng = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10).stderr.splitlines()
    v["nginx"] = next((ln.split(":", 1)[1].strip() for ln in ng if ln.startswith("nginx version")), "?")
    v["nginx_openssl"] = next((ln.split("OpenSSL", 1)[1].strip() for ln in ng if "built with OpenSSL" in ln), "?")
    import h11
    v["h11 (client)"] = h11.__version__
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True, timeout=10)
    v["sniproxy (git)"] = git.stdout.strip() or "?"
    return v


def _cell(s: dict[str, Any] | None, fmt: str) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])} to {fmt.format(s['max'])})"


def markdown(res: dict[str, Any]) -> str:
    p = res["params"]
    out = [f"# sniproxy side by side with HAProxy, nginx and stunnel4 ({res['date']})", "",
           f"Command: `{res['command']}` (runtime {res['runtime_s']} s).", "",
           f"Machine: {res['machine']['nproc']} CPUs ({res['machine']['cpu']}), {res['machine']['kernel']}. "
           f"Servers pinned to CPU {SERVER_CPU}, load generators and backends to CPU {CLIENT_CPU} "
           f"(`Cpus_allowed_list` of the servers: {res['pinning']}).", "",
           "Versions: " + "; ".join(f"{k} = {v}" for k, v in res["versions"].items()), "",
           *_warnings(res),
           f"Rounds: {p['rounds']} per block, peers interleaved, order rotated every round; cells are "
           "median (min to max) over the rounds; ratio = sniproxy median / best peer median.", "",
           "| figure | " + " | ".join(LABELS[n] for n in PEERS) + " | sniproxy / best peer |",
           "|---" * (len(PEERS) + 2) + "|"]
    for f in FIGURES:
        s, r = res["summary"][f.key], res["ratios"][f.key]
        cells = [_cell(s.get(n), f.fmt) for n in PEERS]
        if r.get("ratio") is None:
            rc = "-"
        elif f.higher_is_better:
            rc = f"**{r['ratio']:.2f}** (vs {LABELS[r['best']]}; higher is better)"
        else:
            rc = f"**{r['ratio']:.2f}x** (vs {LABELS[r['best']]}; lower is better)"
        out.append(f"| {f.label} | " + " | ".join(cells) + f" | {rc} |")
    out += ["", "Context (medians): wall rates, how busy the server was, and what the load generator cost.", "",
            "| | " + " | ".join(LABELS[n] for n in PEERS) + " |", "|---" * (len(PEERS) + 1) + "|"]
    ctx_rows = [("HTTPS small: requests/s (wall)", "https_small", "requests_per_s"),
                ("HTTPS small: server CPU share (1.0 = a core)", "https_small", "server_util"),
                ("HTTPS small: client CPU ms per request", "https_small", "client_cpu_ms_per_request"),
                ("HTTPS small: backend CPU ms per request", "https_small", "backend_cpu_ms_per_request"),
                ("HTTPS 100 KB: requests/s (wall)", "https_100k", "requests_per_s"),
                ("HTTPS 100 KB: server CPU share", "https_100k", "server_util"),
                ("HTTPS 100 KB: client CPU ms per request", "https_100k", "client_cpu_ms_per_request"),
                ("HTTPS 100 KB: backend CPU ms per request", "https_100k", "backend_cpu_ms_per_request"),
                ("ping-pong p50 µs (direct: " + _direct(res, "p50_us") + ")", "pingpong", "p50_us"),
                ("ping-pong p99 µs (direct: " + _direct(res, "p99_us") + ")", "pingpong", "p99_us"),
                ("download MB/s (wall)", "download", "MB_per_s"), ("upload MB/s (wall)", "upload", "MB_per_s"),
                ("idle: connections established", "idle", "established")]
    for label, block, key in ctx_rows:
        cells = []
        for n in PEERS:
            vals = _vals(res["raw"].get(block, {}).get(n, []), key)
            m = statistics.median(vals) if vals else None
            cells.append("-" if m is None else f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3g}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for block in ("https_small", "https_100k"):
        rows = [r for n in PEERS for r in res["raw"].get(block, {}).get(n, []) if r.get("ok")]
        util = max((r.get("server_util") or 0 for r in rows), default=0)
        if rows and util < 0.8:
            cli = statistics.median(r.get("client_cpu_ms_per_request") or 0 for r in rows)
            bk = statistics.median(r.get("backend_cpu_ms_per_request") or 0 for r in rows)
            out += ["", f"{block}: the load generator is the bottleneck, not the proxies: the busiest server ran at "
                    f"{util:.0%} of a core while the Python client ({cli:.2f} ms CPU per request) and the Python "
                    f"backend ({bk:.2f} ms) shared CPU {CLIENT_CPU} (with any other work on the machine)."]
    out += ["", "Blocks (1-minute load average at start/end; CPU-s used meanwhile by processes outside the bench):", ""]
    for name, b in res["blocks"].items():
        fc = b["foreign_cpu"]
        out.append(f"- {name}: load {b['load1_start']} → {b['load1_end']}, started {b['start']}, "
                   f"foreign CPU {fc['foreign_cpu_s']} s over {fc['wall_s']} s ({fc['cores']} cores)")
    out += ["", "Checks before the load (TLS 1.3; `fort` reaches the backend, `unknown-ca` refused; HTTPS: the "
            "backend sees the card subject, not a forged header): "
            + ", ".join(f"{n}: {'ok' if c['ok'] else 'FAILED'}" for n, c in res["checks"].items()), ""]
    out += ["Parameters: " + ", ".join(f"{k} = {v}" for k, v in p.items()), "", "Notes:", ""]
    out += [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(out)


QUIET_LOAD = 0.7      # 1-minute load average under which a block counts as run on a quiet machine


def _warnings(res: dict[str, Any]) -> list[str]:
    out = []
    loads = [b[k] for b in res.get("blocks", {}).values() for k in ("load1_start", "load1_end")]
    if loads and max(loads) > QUIET_LOAD:
        out.append(f"**Busy machine**: 1-minute load average up to {max(loads):g} during the blocks (quiet: below "
                   f"{QUIET_LOAD}); the per-CPU-second figures hold up better than latency and wall rates, but "
                   "quote a run on a quiet machine.")
    if "--quick" in res.get("command", ""):
        out.append("**--quick**: short runs (10 ms CPU ticks weigh 5-15 %), 100 MB transfers and 200 idle "
                   "connections: a smoke run that shows every figure is produced, not numbers to quote.")
    return ["\n>\n".join(f"> {w}" for w in out), ""] if out else []


def _direct(res: dict[str, Any], key: str) -> str:
    vals = _vals(res["raw"].get("pingpong", {}).get("direct", []), key)
    return f"{statistics.median(vals):,.0f}" if vals else "-"


NOTES = [
    "Figures are per server CPU-second (utime+stime of the server's processes: sniproxy's one process, "
    "HAProxy's one process, nginx master + its one worker, stunnel's one process with a thread per "
    "connection); wall rates depend on the load generator and the backends, which share CPU 1.",
    "HTTPS: the same SOAP echo backend (tests/integration/httpbackend.py, Python threaded) behind every proxy; "
    "the client is bench/https_proxy.py's h11 keep-alive client in several processes (wrk cannot present a "
    "client certificate). When the server CPU share is well below 1.0 the load generator or the backend on "
    "CPU 1 is the bottleneck: the per-CPU-second figure then compares the servers at the same, lower request "
    "rate (less batching per wake-up than at saturation). sniproxy adds `http.headers: [forwarded, nginx]`; "
    "HAProxy and nginx add the same headers (X-SSL-Client-Verify/-S-DN/-I-DN/-Serial/-Cert, X-Forwarded-For/"
    "-Proto/-Host, Forwarded); stunnel has no HTTP mode ('-').",
    "Ping-pong: one connection, 64 B written, 64 B read back by the echo backend, in a blocking loop; "
    "added latency = the peer's percentile minus the direct (plain TCP to the echo backend) percentile of the "
    "same round; the client's TLS work is in the added latency for every peer alike.",
    "Bulk and idle: bench/run.py's transfer() and memory() (one connection; N connections established through "
    "to the backend and left idle, RSS delta / N after 50 warm-up connections, the server restarted before each "
    "idle round so that no round reuses memory a previous one left in the allocator).",
    "Different OpenSSL builds: sniproxy uses the one bundled with cryptography, the C peers the Debian libssl.",
]


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "peers.md")
    ap.add_argument("--quick", action="store_true", help="smoke run: short loads, 100 MB, 200 idle, 2 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per block (default 3, --quick 2)")
    ap.add_argument("--mb", type=int, default=None, help="MB per bulk transfer (default 1000, --quick 100)")
    ap.add_argument("--conns", type=int, default=None, help="idle connections (default 2000, --quick 200)")
    ap.add_argument("--http-seconds", type=float, default=None, help="per HTTPS run (default 6, --quick 2)")
    ap.add_argument("--http-conns", type=int, default=8)
    ap.add_argument("--http-procs", type=int, default=2, help="load processes sharing --http-conns")
    ap.add_argument("--pp-count", type=int, default=None, help="ping-pong round trips (default 20000, --quick 3000)")
    ap.add_argument("--only", default="", help="comma-separated peers to run (default: all)")
    ap.add_argument("--render", type=Path, help="only rewrite the table (--out) from a peers.json")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--http-client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:
        args.out.write_text(markdown(json.loads(args.render.read_text())))
        print(args.out.read_text())
        return 0
    if args.http_client:
        http_client_entry(args.http_client)
        return 0
    if args.backend:
        core.BACKEND_MAX_LIFE = BACKEND_LIFE
        core.backend_entry(args.backend, args.mb * 1_000_000)
        return 0
    q = args.quick
    rounds = args.rounds or (2 if q else 3)
    mb = args.mb or (100 if q else 1000)
    conns = args.conns or (200 if q else 2000)
    http_seconds = args.http_seconds or (2.0 if q else 6.0)
    pp_count = args.pp_count or (3000 if q else 20000)
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    missing = [b for b, ok in (("haproxy", Path(HAPROXY).exists()), ("nginx", Path(NGINX).exists()),
                               ("nginx stream module", (NGINX_MODULES / "ngx_stream_module.so").exists()),
                               ("stunnel4", stunnel), ("taskset", shutil.which("taskset"))) if not ok]
    if missing or stunnel is None:
        print(f"missing: {', '.join(missing)} (run scripts/install-bench-deps.sh)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))   # inherited by the servers
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})                # the bench, its clients and the backends: CPU 1

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt                               # run the finally below: stop every process
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started with SIGINT ignored (nohup, &)

    from sniproxy.demo import pki as testpki
    t_start = time.monotonic()
    pki = testpki.build(crl.CACHE_DIR / "pki")
    tmp = Path(tempfile.mkdtemp(prefix="sniproxy-peers-"))
    bports = dict(zip((*RAW_KEYS, "stats"), core.free_ports(len(RAW_KEYS) + 1), strict=True))
    backend = subprocess.Popen([sys.executable, __file__, "--backend",
                                ",".join(f"{k}={v}" for k, v in bports.items()), "--mb", str(mb)],
                               stdin=subprocess.PIPE)
    http_backend = None
    targets: dict[str, Any] = {}
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]]),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(),
                    "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                 if ln.startswith("model name")), "?")},
        "versions": versions(stunnel),
        "params": {"rounds": rounds, "bulk_mb": mb, "idle_conns": conns, "http_seconds": http_seconds,
                   "http_conns": args.http_conns, "http_procs": args.http_procs, "pingpong_round_trips": pp_count,
                   "sniproxy_http_headers": SNIPROXY_HTTP_HEADERS},
        "checks": {},
    }
    only = [p for p in PEERS if not args.only or p in args.only.split(",")]
    try:
        http_backend = https.HttpBackend(tmp / "http-requests.jsonl")
        core.wait_listen(bports["echo"], backend)
        makers = {"sniproxy": lambda: sniproxy_peer(pki, bports, http_backend.port, tmp),
                  "haproxy": lambda: haproxy_peer(pki, bports, http_backend.port, tmp),
                  "nginx": lambda: nginx_peer(pki, bports, http_backend.port, tmp),
                  "stunnel": lambda: stunnel_peer(pki, bports, tmp, stunnel)}
        for name in only:
            t = targets[name] = makers[name]()
            try:
                t.start()
            except RuntimeError:
                print(f"{name} did not start: {' '.join(t.cmd)}\n{t.log.read_text(errors='replace')[-3000:]}",
                      file=sys.stderr)
                raise
        res["commands"] = {n: " ".join(t.cmd) for n, t in targets.items()}
        res["pinning"] = {n: cpus_allowed(t.pids[-1]) for n, t in targets.items()}
        for n, t in targets.items():
            c = core.check_cards(t, pki)
            c["ok"] = c["ok"] and c["fort"].get("tls") == "TLSv1.3"
            if "https" in t.ports:
                c["https"] = check_https(t, pki, http_backend)
                c["ok"] = c["ok"] and c["https"]["ok"]
            res["checks"][n] = c
            print(n, "checks", "ok" if c["ok"] else json.dumps(c), flush=True)
        bench = Bench(targets, rounds)
        web = [n for n in only if "https" in targets[n].ports]
        for name in web:                                     # warm-up: code paths, pools, allocator
            http_measure(targets[name], pki, "small", 2, 1, 0.5, 500)
        for body in ("small", "100k"):
            bench.block(f"https_{body}", web, lambda n, body=body: http_measure(
                targets[n], pki, body, args.http_conns, args.http_procs, http_seconds, 500_000, http_backend.proc.pid))
        client = core.client_ctx(pki, "fort")
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        bench.block("pingpong", [*only, "direct"], lambda n: pingpong(
            bports["echo"], None, pp_count, 30, None) if n == "direct" else pingpong(
            targets[n].ports["echo"], client, pp_count, 30, targets[n]))
        for direction in ("download", "upload"):
            bench.block(direction, only, lambda n, d=direction: core.transfer(
                targets[n], pki, mb * 1_000_000, d, timeout=max(60, mb * 0.2)))
        def idle(n: str) -> dict[str, Any]:
            # a fresh server each round: a second round on the same one only measures memory its allocator
            # kept from the first (HAProxy's pools gave 0 KiB per connection)
            t = targets[n]
            t.stop()
            t.start()
            r = core.memory(t, pki, conns, timeout=120)
            # a round that could not hold (nearly) every connection is not the figure asked for: left out
            return dict(r, fresh_server=True, ok=r["established"] >= 0.95 * conns)

        bench.block("idle", only, idle)
        res["raw"], res["blocks"] = bench.raw, bench.blocks
    finally:
        for t in targets.values():
            t.stop()
        if http_backend is not None:
            http_backend.stop()
        core.stop_backend(backend)
        shutil.rmtree(tmp, ignore_errors=True)
    res["summary"] = summarize(res["raw"])
    res["ratios"] = ratios(res["summary"])
    res["runtime_s"] = round(time.monotonic() - t_start, 1)
    res["notes"] = NOTES
    out = args.out if args.out.suffix == ".md" else args.out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    out.write_text(markdown(res))
    print(markdown(res))
    return 0 if all(c["ok"] for c in res["checks"].values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("peers.py: interrupted; every process it started was stopped", file=sys.stderr)
        sys.exit(130)
