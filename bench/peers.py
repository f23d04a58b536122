"""Side by side on the data path: sniproxy against HAProxy, nginx and stunnel4, per server CPU-second, one command.

``python bench/peers.py [--quick] [--rounds N] [--out bench/results/peers.md]`` starts, on 127.0.0.1 with free
ports, with the same test PKI (``sniproxy.demo.pki.build``, cached in ``bench/.cache/pki``), the same backends
and the same TLS policy (TLS 1.3, mutual TLS with the RSA-2048 ``fort`` card, same server certificate per
figure), one worker / process / thread each:

- ``sniproxy``: ``python -O -m sniproxy run`` (``workers: 1``), ``protocol: tls`` listeners and one ``https``
  listener (``http.headers: [forwarded, nginx]``); it runs the build found from the current directory: run the
  bench from a compiled mirror (``scripts/compiled-mirror.sh build/bench-tree && cd build/bench-tree``) for
  the image's build, whose HTTP half is compiled with mypyc (decision 0016); the table says which;
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
mail = _load("bench_peers_mail", BENCH_DIR / "peers_mail.py")   # STARTTLS row: mail backend, clients, configs
#: ``--only`` row names -> the blocks they run (a block name itself works too)
ROWS = {"https": ("https_small", "https_100k"), "pingpong": ("pingpong",), "bulk": ("download", "upload"),
        "idle": ("idle",), "starttls": ("starttls_imap", "starttls_smtp"), "workers": ("workers_hs", "workers_https")}
BLOCKS = tuple(b for bs in ROWS.values() for b in bs)
MAIL_PEERS = ("sniproxy", "nginx", "stunnel")       # HAProxy has no STARTTLS
WORKER_VARIANTS = ("sniproxy", "sniproxy-1u", "sniproxy-auto")


# --------------------------------------------------------------------------- servers
def pinned(cmd: list[str], cpus: str = str(SERVER_CPU)) -> list[str]:
    """``taskset`` execs the server: the pid we hold is the server's own."""
    return ["taskset", "-c", cpus, *cmd] if (os.cpu_count() or 1) > 1 else cmd


def all_cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


@contextlib.contextmanager
def unpinned(pids: list[int]) -> Any:
    """The bench (so the load processes it starts) and every thread of ``pids`` (the backends) on every CPU, for
    the ``workers`` block; back to CPU 1 after."""
    def put(cpus: set[int]) -> None:
        os.sched_setaffinity(0, cpus)
        for p in pids:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{p}/task"):
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(tid), cpus)
    put(all_cpus())
    try:
        yield
    finally:
        put({CLIENT_CPU} if (os.cpu_count() or 1) > 1 else all_cpus())


def sniproxy_peer(pki: Any, bports: dict[str, int], http_port: int, tmp: Path, name: str = "sniproxy",
                  workers: int | str = 1, cpus: str = str(SERVER_CPU), mports: dict[str, int] | None = None,
                  mail_backend: dict[str, int] | None = None) -> Any:
    """``mports``: also the ``imap``/``smtp`` STARTTLS listeners there, to ``mail_backend``."""
    (https_port,) = core.free_ports(1)

    def tweak(d: dict[str, Any]) -> None:
        d["log"] = {"level": "warning", "format": "json"}
        # every bench connection comes from 127.0.0.1: the per-address limit (1000) would refuse half of the
        # idle connections, and the C peers have no such limit configured
        d["limits"] = {"max_connections": 20000, "max_per_ip": 20000}
        d["listeners"].append({"name": "ws", "bind": f"{HOST}:{https_port}", "protocol": "https",
                               "backend": f"{HOST}:{http_port}", "sni": {https.SNI: "igcsante"},
                               "default_flow": "2bis", "http": {"headers": SNIPROXY_HTTP_HEADERS}})
        if mports and mail_backend:
            d["listeners"] += mail.sniproxy_listeners(mports, mail_backend)

    core.SNIPROXY_PY_FLAGS = ["-O"]
    t = core.sniproxy_target(name, workers, pki, bports, tmp, keys=RAW_KEYS, tweak=tweak)
    t.ports["https"] = https_port
    t.ports.update(mports or {})
    t.cmd = pinned(t.cmd, cpus)
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


def nginx_peer(pki: Any, bports: dict[str, int], http_port: int, tmp: Path, mports: dict[str, int] | None = None,
               auth_port: int | None = None) -> Any:
    """``mports``: also the mail module's ``imap``/``smtp`` STARTTLS servers there, logins via ``auth_port``."""
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
    with_mail = bool(mports and auth_port)
    mail_conf = mail.nginx_mail_block(pki, ca, mports, auth_port) if mports and auth_port else ""
    conf = f"""load_module {NGINX_MODULES / "ngx_stream_module.so"};
{f"load_module {NGINX_MODULES / 'ngx_mail_module.so'};" if with_mail else ""}
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
{mail_conf}"""
    cfg = d / "nginx.conf"
    cfg.write_text(conf)
    cmd = [NGINX, "-e", "stderr", "-p", str(d), "-c", str(cfg)]
    return core.Target("nginx", pinned(cmd), {**ports, **(mports or {})}, tmp / "nginx.log")


def stunnel_peer(pki: Any, bports: dict[str, int], tmp: Path, binary: str, mports: dict[str, int] | None = None,
                 mail_backend: dict[str, int] | None = None) -> Any:
    """``mports``: also ``protocol = imap`` / ``smtp`` services there (server-side STARTTLS), to ``mail_backend``."""
    t = core.stunnel_target(pki, bports, tmp, binary, keys=RAW_KEYS, extra=("sslVersionMin = TLSv1.3",))
    if mports and mail_backend:
        cfg = Path(t.cmd[-1])
        ca = core.card_cafile(pki, tmp / "stunnel-mail-ca.pem")
        cfg.write_text(cfg.read_text() + "\n" + mail.stunnel_mail_services(pki, ca, mports, mail_backend))
        t.ports.update(mports)
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


def machine_cpu() -> float:
    """CPU-seconds the whole machine has been busy (every CPU, every process: /proc/stat, idle and iowait out)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return float(sum(v) - v[3] - v[4]) / float(core.TICK)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(r.ru_utime + r.ru_stime)


def workers_run(t: Any, backend_pid: int, run: Any) -> dict[str, Any]:
    """One run of the ``workers`` block: ``run()`` loads ``t``; adds what bounds the wall rate on a shared machine:
    the load processes' CPU (children reaped meanwhile), the backend's, the whole machine's busy share, and how the
    server's CPU split over its processes (supervisor + workers: SO_REUSEPORT's balance)."""
    per0 = {p: core.cpu_seconds([p]) for p in t.pids}
    k0, b0, m0, w0 = _children_cpu(), core.cpu_seconds([backend_pid]), machine_cpu(), time.monotonic()
    r = run()
    wall = time.monotonic() - w0
    per = {p: core.cpu_seconds([p]) - per0[p] for p in t.pids}
    client, bcpu, busy = _children_cpu() - k0, core.cpu_seconds([backend_pid]) - b0, machine_cpu() - m0
    n = r.get("handshakes", r.get("requests", 0))
    total = sum(per.values())
    ncpu = os.cpu_count() or 1
    out = {"ok": n > 0 and not r.get("errors") and r.get("reached_backend", n) >= n and r.get("ok", True),
           "ops": n, "errors": r.get("errors"), "reached_backend": r.get("reached_backend"),
           "wall_s": r["wall_s"], "server_cpu_s": r["server_cpu_s"],
           "per_s": r.get("per_s", r.get("requests_per_s")),
           "per_server_cpu_s": r.get("per_server_cpu_s", r.get("requests_per_server_cpu_s")),
           "server_util": round(r["server_cpu_s"] / r["wall_s"], 3) if r["wall_s"] else None,
           "server_cpu_ms_per_op": round(1000 * r["server_cpu_s"] / n, 3) if n else None,
           "client_cpu_ms_per_op": round(1000 * client / n, 3) if n else None,
           "backend_cpu_ms_per_op": round(1000 * bcpu / n, 3) if n else None,
           "machine_busy_share": round(busy / (wall * ncpu), 3) if wall else None,
           "bench_share": round((r["server_cpu_s"] + client + bcpu) / (wall * ncpu), 3) if wall else None,
           "workers": max(1, len(t.pids) - 1),
           "process_cpu_share": [round(c / total, 3) for c in sorted(per.values(), reverse=True) if c > 0]
           if total else []}
    return out


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
    Figure("imap", "IMAP STARTTLS: greeting, STARTTLS, mutual TLS 1.3, LOGIN to the backend, its OK: "
           "connections per server CPU-s", True),
    Figure("smtp", "SMTP STARTTLS: greeting, EHLO, STARTTLS, mutual TLS 1.3, EHLO, AUTH PLAIN, 235: "
           "connections per server CPU-s", True),
]
#: the ``workers`` rows: sniproxy ``workers: auto`` against N x one worker (not against the other peers)
WORKER_FIGURES = {"workers_hs": "`workers: auto` vs N x one worker: full mutual TLS 1.3 handshakes/s (wall)",
                  "workers_https": "`workers: auto` vs N x one worker: HTTPS ~200 B SOAP POST requests/s (wall)"}


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
        m0, w0 = machine_cpu(), time.monotonic()
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
        # /proc/stat: every process, short-lived ones included (ForeignCpu only sees those alive at both marks)
        info["machine_busy_share"] = round((machine_cpu() - m0) / ((time.monotonic() - w0) * (os.cpu_count() or 1)), 3)
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
           "idle": ("idle", "kib_per_conn"),
           "imap": ("starttls_imap", "per_server_cpu_s"), "smtp": ("starttls_smtp", "per_server_cpu_s")}
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
        # the workers rows' sniproxy variants share the HTTPS blocks; they are sniproxy, not a peer to beat
        others = {p: v["median"] for p, v in row.items() if p not in WORKER_VARIANTS and v}
        if not mine or not others:
            out[f.key] = {"ratio": None}
            continue
        best = max(others, key=lambda p: others[p]) if f.higher_is_better else min(others, key=lambda p: others[p])
        out[f.key] = {"best": best, "ratio": round(mine["median"] / others[best], 3) if others[best] else None}
    return out


def workers_summary(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Per ``workers`` block: auto's wall rate against N x one worker's rate on a full core (its rate per CPU-s,
    pinned to CPU 0 with the load on CPU 1), the CPU efficiency auto / one worker, and the ceiling this machine
    allows: every CPU divided by what one operation costs server + load generator + backend in the auto run."""
    out: dict[str, dict[str, Any]] = {}
    ncpu = os.cpu_count() or 1
    for block in WORKER_FIGURES:
        rows = raw.get(block, {})
        if not rows:
            continue

        def med(variant: str, key: str, rows: dict[str, list[dict[str, Any]]] = rows) -> float | None:
            vals = _vals(rows.get(variant, []), key)
            return statistics.median(vals) if vals else None

        one_cpu, auto_wall = med("sniproxy", "per_server_cpu_s"), med("sniproxy-auto", "per_s")
        auto_cpu, one_u_wall = med("sniproxy-auto", "per_server_cpu_s"), med("sniproxy-1u", "per_s")
        n = int(med("sniproxy-auto", "workers") or ncpu)
        per_op = [med("sniproxy-auto", k) for k in ("server_cpu_ms_per_op", "client_cpu_ms_per_op",
                                                    "backend_cpu_ms_per_op")]
        ceiling = 1000 * ncpu / sum(per_op) if all(v is not None for v in per_op) and sum(per_op) else None  # type: ignore[arg-type]
        ideal = n * one_cpu if one_cpu else None
        out[block] = {"n": n, "auto_per_s": auto_wall, "one_per_server_cpu_s": one_cpu, "ideal_per_s": ideal,
                      "ratio": round(auto_wall / ideal, 3) if auto_wall and ideal else None,
                      "cpu_efficiency": round(auto_cpu / one_cpu, 3) if auto_cpu and one_cpu else None,
                      "ceiling_per_s": round(ceiling, 1) if ceiling else None,
                      "ceiling_ratio": round(ceiling / ideal, 3) if ceiling and ideal else None,
                      "auto_vs_one_unpinned_wall": round(auto_wall / one_u_wall, 3) if auto_wall and one_u_wall
                      else None}
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
    v["sniproxy HTTP half"] = http_build()
    return v


def http_build() -> str:
    """The build ``python -m sniproxy`` loads from here (as the servers are started): compiled or interpreted."""
    got = subprocess.run([sys.executable, "-c", "from sniproxy.compiled import http_build; print(http_build())"],
                         capture_output=True, text=True, timeout=30)
    return got.stdout.strip() or f"? ({got.stderr.strip()[-200:]})"


def _cell(s: dict[str, Any] | None, fmt: str) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])} to {fmt.format(s['max'])})"


def markdown(res: dict[str, Any]) -> str:
    p = res["params"]
    loads = [b[k] for b in res.get("blocks", {}).values() for k in ("load1_start", "load1_end")]
    noisy = f": noisy machine (1-minute load {min(loads):g} to {max(loads):g}), figures indicative" \
        if loads and max(loads) > QUIET_LOAD else ""
    ran = p.get("blocks") or list(BLOCKS)
    partial = ([f"Partial run (`--only`): blocks {', '.join(ran)} only; the other rows are not in this table (their "
                "last run: `git log -- bench/results/peers.md`).", ""] if set(ran) != set(BLOCKS) else [])
    out = [f"# sniproxy side by side with HAProxy, nginx and stunnel4 ({res['date']}){noisy}", "",
           *partial,
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
        s, r = res["summary"].get(f.key, {}), res["ratios"].get(f.key, {})
        if not any(s.values()):
            continue                     # not measured in this run (--only)
        cells = [_cell(s.get(n), f.fmt) for n in PEERS]
        if r.get("ratio") is None:
            rc = "-"
        elif f.higher_is_better:
            rc = f"**{r['ratio']:.2f}** (vs {LABELS[r['best']]}; higher is better)"
        else:
            rc = f"**{r['ratio']:.2f}x** (vs {LABELS[r['best']]}; lower is better)"
        out.append(f"| {f.label} | " + " | ".join(cells) + f" | {rc} |")
    ws = res.get("workers") or {}
    for block, label in WORKER_FIGURES.items():
        w = ws.get(block)
        if not w or w.get("auto_per_s") is None:
            continue
        one = "-" if w["one_per_server_cpu_s"] is None else f"{w['one_per_server_cpu_s']:,.0f}"
        cell = f"auto: {w['auto_per_s']:,.0f}/s; one worker: {one} per CPU-s"
        rc = ("-" if w["ratio"] is None else
              f"**{w['ratio']:.2f}** of N = {w['n']} x one worker (target >= 0.9; this machine's ceiling: "
              f"{'-' if w['ceiling_ratio'] is None else format(w['ceiling_ratio'], '.2f')})")
        out.append(f"| {label} | {cell} | - | - | - | {rc} |")
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
                ("idle: connections established", "idle", "established"),
                ("IMAP STARTTLS: connections/s (wall)", "starttls_imap", "per_s"),
                ("IMAP STARTTLS: server CPU share", "starttls_imap", "server_util"),
                ("IMAP STARTTLS: client CPU ms per connection", "starttls_imap", "client_cpu_ms_per_conn"),
                ("IMAP STARTTLS: backend (+ nginx auth_http) CPU ms per connection", "starttls_imap",
                 "backend_cpu_ms_per_conn"),
                ("SMTP STARTTLS: connections/s (wall)", "starttls_smtp", "per_s"),
                ("SMTP STARTTLS: server CPU share", "starttls_smtp", "server_util"),
                ("SMTP STARTTLS: client CPU ms per connection", "starttls_smtp", "client_cpu_ms_per_conn"),
                ("SMTP STARTTLS: backend (+ nginx auth_http) CPU ms per connection", "starttls_smtp",
                 "backend_cpu_ms_per_conn")]
    ctx_rows = [r for r in ctx_rows if r[1] in res["raw"]]
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
    out += _workers_md(res)
    out += ["", "Blocks (1-minute load average at start/end; CPU-s used meanwhile by processes outside the bench):", ""]
    for name, b in res["blocks"].items():
        fc = b["foreign_cpu"]
        busy = (f", whole machine busy {b['machine_busy_share']:.0%} of its CPUs (/proc/stat)"
                if b.get("machine_busy_share") is not None else "")
        out.append(f"- {name}: load {b['load1_start']} → {b['load1_end']}, started {b['start']}, "
                   f"foreign CPU {fc['foreign_cpu_s']} s over {fc['wall_s']} s ({fc['cores']} cores; processes alive "
                   f"at both ends of the block only){busy}")
    out += ["", "Checks before the load (TLS 1.3; `fort` reaches the backend, `unknown-ca` refused; HTTPS: the "
            "backend sees the card subject, not a forged header; STARTTLS: `fort` logs in and the backend counts the "
            "login, `unknown-ca` reaches neither the backend nor nginx's auth_http): "
            + ", ".join(f"{n}: {'ok' if c['ok'] else 'FAILED'}" for n, c in res["checks"].items()), ""]
    out += ["Parameters: " + ", ".join(f"{k} = {v}" for k, v in p.items()), "", "Notes:", ""]
    out += [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(out)


WORKER_SHORT = {"workers_hs": "handshakes", "workers_https": "HTTPS small"}
WORKER_LABELS = {"sniproxy": "1 worker, CPU 0 (load on CPU 1)", "sniproxy-1u": "1 worker, CPUs 0-1",
                 "sniproxy-auto": "`workers: auto`, CPUs 0-1"}


def _workers_md(res: dict[str, Any]) -> list[str]:
    """The ``workers`` block in detail: each variant's wall rate, CPU, and what bounded it."""
    blocks = [b for b in WORKER_FIGURES if res["raw"].get(b)]
    if not blocks:
        return []
    out = ["", "`workers: auto` against one worker (medians over the rounds; sniproxy only). The one-worker reference "
           "is pinned to CPU 0 with the load on CPU 1 as in the other rows; `CPUs 0-1`: the server, its load "
           "processes and the backends all float over both CPUs (the load generator cannot run elsewhere here).", "",
           "| | " + " | ".join(f"{WORKER_SHORT[b]}: {WORKER_LABELS[v]}" for b in blocks for v in WORKER_VARIANTS)
           + " |",
           "|---" * (len(blocks) * len(WORKER_VARIANTS) + 1) + "|"]
    keys = [("rate (wall, per s)", "per_s"), ("per server CPU-s", "per_server_cpu_s"),
            ("server CPU share (1.0 = a core)", "server_util"), ("server CPU ms per op", "server_cpu_ms_per_op"),
            ("load generator CPU ms per op", "client_cpu_ms_per_op"),
            ("backend CPU ms per op", "backend_cpu_ms_per_op"),
            ("whole machine busy (share of all CPUs)", "machine_busy_share"),
            ("of which server + load generator + backend", "bench_share")]
    for label, key in keys:
        cells = []
        for b in blocks:
            for v in WORKER_VARIANTS:
                vals = _vals(res["raw"][b].get(v, []), key)
                m = statistics.median(vals) if vals else None
                cells.append("-" if m is None else f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3g}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for b in blocks:
        for v in WORKER_VARIANTS:
            rows = [r for r in res["raw"][b].get(v, []) if r.get("ok")]
            cells.append(" / ".join(f"{x:.2f}" for x in rows[len(rows) // 2]["process_cpu_share"]) if rows else "-")
    out.append("| server CPU split over its processes (supervisor + workers) | " + " | ".join(cells) + " |")
    out.append("")
    for b in blocks:
        w = res.get("workers", {}).get(b, {})
        if w.get("ratio") is None:
            continue
        out.append(f"- {WORKER_FIGURES[b]}: auto {w['auto_per_s']:,.0f}/s = **{w['ratio']:.2f}** x (N = {w['n']}) x "
                   f"one worker's {w['one_per_server_cpu_s']:,.0f} per CPU-s (target >= 0.9); CPU efficiency auto / "
                   f"one worker {w['cpu_efficiency']}; auto / one worker on the same floating CPUs: "
                   f"{w['auto_vs_one_unpinned_wall']}x. Ceiling on this machine: {res['machine']['nproc']} CPUs / "
                   f"(server + load generator + backend CPU per op in the auto run) = {w['ceiling_per_s']}/s, "
                   f"i.e. **{w['ceiling_ratio']}** of N x one worker: what the load generator and the backend take "
                   "from the same two CPUs is not available to the workers.")
    return out


QUIET_LOAD = 0.7      # 1-minute load average under which a block counts as run on a quiet machine


def _warnings(res: dict[str, Any]) -> list[str]:
    out = []
    loads = [b[k] for b in res.get("blocks", {}).values() for k in ("load1_start", "load1_end")]
    if loads and max(loads) > QUIET_LOAD:
        out.append(f"**Busy machine**: 1-minute load average up to {max(loads):g} during the blocks (quiet: below "
                   f"{QUIET_LOAD}); the per-CPU-second figures hold up better than latency and wall rates, but "
                   "quote a run on a quiet machine.")
    build = res.get("versions", {}).get("sniproxy HTTP half")
    if build != "compiled":
        out.append(f"**sniproxy's HTTP half ran {build}**, not the image's compiled build (decision 0016): run the "
                   "bench from a compiled mirror of the tree (scripts/compiled-mirror.sh) to measure what ships.")
    if "--quick" in res.get("command", ""):
        out.append("**--quick**: short runs (10 ms CPU ticks weigh 5-15 %), 100 MB transfers and 200 idle "
                   "connections: a smoke run that shows every figure is produced, not numbers to quote.")
    return ["\n>\n".join(f"> {w}" for w in out), ""] if out else []


def _direct(res: dict[str, Any], key: str) -> str:
    vals = _vals(res["raw"].get("pingpong", {}).get("direct", []), key)
    return f"{statistics.median(vals):,.0f}" if vals else "-"


NOTES = [
    "Figures are per server CPU-second (utime+stime of the server's processes: sniproxy's supervisor + its worker, "
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
    "STARTTLS (bench/peers_mail.py): one connection = connect, greeting, (SMTP: EHLO), STARTTLS, full TLS 1.3 "
    "handshake with the fort card (fresh session), IMAP `LOGIN` / SMTP `EHLO` + `AUTH PLAIN`, read the first "
    "post-login answer (tagged OK / 235), close; the same Python backend (asyncio, CPU 1) behind every peer counts "
    "IMAP LOGINs and SMTP sessions past EHLO, and every counted connection reached it. What differs: sniproxy "
    "answers the pre-TLS dialog itself, connects the backend after the handshake, swallows its greeting and relays "
    "the client's LOGIN/AUTH to it (no identity sent: `identity: none`). nginx mail (`starttls only`, "
    "`ssl_verify_client on`, same CA file) accepts the card in the handshake and checks the verify result just "
    "after it (an unknown CA gets no handshake alert: IMAP `* BYE SSL certificate error` then close, SMTP a close), "
    "asks `auth_http` "
    "(a tiny HTTP/1.0 server in the backend process, one connection per login; it requires Auth-SSL-Verify: "
    "SUCCESS and answers Auth-Server/Auth-Port), then logs in to the backend itself: IMAP `LOGIN` with two "
    "synchronising literals (3 round trips), SMTP `EHLO` only (`xclient off`; nginx answers the client's AUTH "
    "with its own 235, the backend never sees AUTH). stunnel (`protocol = imap|smtp`, server mode) connects the "
    "backend before TLS (an unknown card still costs a backend connection), passes the IMAP greeting (answers "
    "EHLO/STARTTLS itself for SMTP) and relays raw bytes after the handshake; it waits 200 ms for a client that "
    "speaks first (its RFC 2595/2487 detection) before greeting, so its load runs more connections in flight "
    "(--mail-threads-stunnel) for a comparable rate. HAProxy has no STARTTLS: '-'.",
    "workers: auto (N = the CPUs the server may use, 2 here) is started with `taskset -c 0,1`; the one-worker "
    "reference is the sniproxy peer of the other rows (CPU 0, load on CPU 1): its rate per CPU-s is what one worker "
    "does with a core to itself, and the target compares auto's wall rate with N times that. On this 2-CPU machine "
    "the load generator (Python ssl client: more CPU per handshake than the server), the backends and any other "
    "work share the two CPUs with the workers, so auto cannot get N cores: the 'ceiling' is every CPU divided by "
    "the CPU one operation costs server + load generator + backend in the auto run, as a share of N x one worker. "
    "CPU efficiency = auto's rate per CPU-s / one worker's (1.0: the workers cost nothing extra per operation).",
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
    ap.add_argument("--mail-seconds", type=float, default=None, help="per STARTTLS run (default 6, --quick 2)")
    ap.add_argument("--mail-procs", type=int, default=2, help="STARTTLS load processes")
    ap.add_argument("--mail-threads", type=int, default=2, help="connections in flight per STARTTLS load process")
    ap.add_argument("--mail-threads-stunnel", type=int, default=16,
                    help="the same for stunnel, which waits 200 ms for a client that speaks first before STARTTLS")
    ap.add_argument("--hs-seconds", type=float, default=None, help="per handshake run, workers row (default 6, "
                    "--quick 2)")
    ap.add_argument("--hs-clients", type=int, default=4, help="handshake load processes, workers row")
    ap.add_argument("--only", default="", help="comma-separated peers (" + ",".join(PEERS) + ") and/or rows ("
                    + ",".join(ROWS) + ") or blocks to run (default: all)")
    ap.add_argument("--render", type=Path, help="only rewrite the table (--out) from a peers.json")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--http-client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:
        res = json.loads(args.render.read_text())
        res["summary"] = summarize(res["raw"])   # recomputed: a fixed summary applies to a stored run
        res["ratios"] = ratios(res["summary"])
        args.out.write_text(markdown(res))
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
    mail_seconds = args.mail_seconds or (2.0 if q else 6.0)
    hs_seconds = args.hs_seconds or (2.0 if q else 6.0)
    tokens = [x for x in args.only.split(",") if x]
    bad = [x for x in tokens if x not in PEERS and x not in ROWS and x not in BLOCKS]
    if bad:
        ap.error(f"--only: unknown {', '.join(bad)} (peers: {', '.join(PEERS)}; rows: {', '.join(ROWS)}; "
                 f"blocks: {', '.join(BLOCKS)})")
    only = [p for p in PEERS if p in tokens] or list(PEERS)
    blocks = [b for b in BLOCKS if b in tokens or any(b in ROWS[r] for r in tokens if r in ROWS)] or list(BLOCKS)
    # a peer is started only if it takes part in a block of this run
    takes_part = {"haproxy": {"https_small", "https_100k", "pingpong", "download", "upload", "idle"},
                  "nginx": set(BLOCKS) - set(ROWS["workers"]),
                  "stunnel": {"pingpong", "download", "upload", "idle", *ROWS["starttls"]}, "sniproxy": set(BLOCKS)}
    only = [p for p in only if takes_part[p] & set(blocks)]
    if not only:
        ap.error(f"--only {args.only}: none of these peers takes part in these rows (HAProxy has no STARTTLS; the "
                 "workers row is sniproxy's)")
    want_mail = bool(set(blocks) & set(ROWS["starttls"])) and any(p in MAIL_PEERS for p in only)
    want_workers = bool(set(blocks) & set(ROWS["workers"])) and "sniproxy" in only
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    missing = [b for b, ok in (("haproxy", Path(HAPROXY).exists()), ("nginx", Path(NGINX).exists()),
                               ("nginx stream module", (NGINX_MODULES / "ngx_stream_module.so").exists()),
                               ("nginx mail module (libnginx-mod-mail)",
                                not want_mail or (NGINX_MODULES / "ngx_mail_module.so").exists()),
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
    mail_backend = None
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
                   "sniproxy_http_headers": SNIPROXY_HTTP_HEADERS, "blocks": blocks,
                   "mail_seconds": mail_seconds, "mail_procs": args.mail_procs, "mail_threads": args.mail_threads,
                   "mail_threads_stunnel": args.mail_threads_stunnel, "hs_seconds": hs_seconds,
                   "hs_clients": args.hs_clients},
        "checks": {},
    }
    try:
        http_backend = https.HttpBackend(tmp / "http-requests.jsonl")
        core.wait_listen(bports["echo"], backend)
        mb_ports: dict[str, int] = {}
        if want_mail:
            mb_ports = dict(zip(("imap", "smtp", "auth", "stats"), core.free_ports(4), strict=True))
            mail_backend = mail.MailBackend(mb_ports)

        def mports() -> dict[str, int] | None:
            return dict(zip(mail.KINDS, core.free_ports(2), strict=True)) if want_mail else None

        makers = {"sniproxy": lambda: sniproxy_peer(pki, bports, http_backend.port, tmp, mports=mports(),
                                                    mail_backend=mb_ports),
                  "haproxy": lambda: haproxy_peer(pki, bports, http_backend.port, tmp),
                  "nginx": lambda: nginx_peer(pki, bports, http_backend.port, tmp, mports=mports(),
                                              auth_port=mb_ports.get("auth")),
                  "stunnel": lambda: stunnel_peer(pki, bports, tmp, stunnel, mports=mports(), mail_backend=mb_ports)}
        every_cpu = ",".join(map(str, sorted(all_cpus())))
        if want_workers:
            makers["sniproxy-1u"] = lambda: sniproxy_peer(pki, bports, http_backend.port, tmp, name="sniproxy-1u",
                                                          cpus=every_cpu)
            makers["sniproxy-auto"] = lambda: sniproxy_peer(pki, bports, http_backend.port, tmp,
                                                            name="sniproxy-auto", workers="auto", cpus=every_cpu)
        for name in [*only, *(WORKER_VARIANTS[1:] if want_workers else ())]:
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
            if mail_backend is not None and "imap" in t.ports:
                c["mail"] = mail.check(t, pki, mail_backend)
                c["ok"] = c["ok"] and c["mail"]["ok"]
            res["checks"][n] = c
            print(n, "checks", "ok" if c["ok"] else json.dumps(c), flush=True)
        bench = Bench(targets, rounds)
        run_blocks = set(blocks)
        web = [n for n in only if "https" in targets[n].ports]
        warm = web if run_blocks & {"https_small", "https_100k"} else []
        warm += list(WORKER_VARIANTS) if want_workers else []
        for name in warm:                                   # warm-up: code paths, pools, allocator
            http_measure(targets[name], pki, "small", 2, 1, 0.5, 500)
        for body in ("small", "100k"):
            if f"https_{body}" in run_blocks:
                bench.block(f"https_{body}", web, lambda n, body=body: http_measure(
                    targets[n], pki, body, args.http_conns, args.http_procs, http_seconds, 500_000,
                    http_backend.proc.pid))
        client = core.client_ctx(pki, "fort")
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        if "pingpong" in run_blocks:
            bench.block("pingpong", [*only, "direct"], lambda n: pingpong(
                bports["echo"], None, pp_count, 30, None) if n == "direct" else pingpong(
                targets[n].ports["echo"], client, pp_count, 30, targets[n]))
        for direction in ("download", "upload"):
            if direction in run_blocks:
                bench.block(direction, only, lambda n, d=direction: core.transfer(
                    targets[n], pki, mb * 1_000_000, d, timeout=max(60, mb * 0.2)))
        if mail_backend is not None:
            mb_ = mail_backend

            def starttls(n: str, kind: str) -> dict[str, Any]:
                threads = args.mail_threads_stunnel if n == "stunnel" else args.mail_threads
                return dict(mail.measure(targets[n], kind, pki, mb_, args.mail_procs, threads, mail_seconds, 200_000,
                                         core.cpu_seconds))

            for kind in mail.KINDS:
                if f"starttls_{kind}" in run_blocks:
                    bench.block(f"starttls_{kind}", [n for n in only if n in MAIL_PEERS],
                                lambda n, k=kind: starttls(n, k))
        if want_workers:
            server_ca = pki.authorities["igc-cps-2bis"].roots[0]
            floating = [backend.pid, http_backend.proc.pid]

            def variant(n: str, backend_pid: int, load: Any) -> dict[str, Any]:
                if n == "sniproxy":                         # the reference: CPU 0, load on CPU 1
                    return workers_run(targets[n], backend_pid, load)
                with unpinned(floating):
                    return workers_run(targets[n], backend_pid, load)

            if "workers_hs" in run_blocks:
                bench.block("workers_hs", list(WORKER_VARIANTS), lambda n: variant(
                    n, backend.pid, lambda: core.py_handshakes(targets[n], pki, hs_seconds, args.hs_clients,
                                                               server_ca, bports["stats"])))
            if "workers_https" in run_blocks:
                bench.block("workers_https", list(WORKER_VARIANTS), lambda n: variant(
                    n, http_backend.proc.pid, lambda: http_measure(targets[n], pki, "small", args.http_conns,
                                                                   args.http_procs, http_seconds, 500_000)))

        def idle(n: str) -> dict[str, Any]:
            # a fresh server each round: a second round on the same one only measures memory its allocator
            # kept from the first (HAProxy's pools gave 0 KiB per connection)
            t = targets[n]
            t.stop()
            t.start()
            r = core.memory(t, pki, conns, timeout=120)
            # a round that could not hold (nearly) every connection is not the figure asked for: left out
            return dict(r, fresh_server=True, ok=r["established"] >= 0.95 * conns)

        if "idle" in run_blocks:
            bench.block("idle", only, idle)
        res["raw"], res["blocks"] = bench.raw, bench.blocks
    finally:
        for t in targets.values():
            t.stop()
        if http_backend is not None:
            http_backend.stop()
        if mail_backend is not None:
            mail_backend.stop()
        core.stop_backend(backend)
        shutil.rmtree(tmp, ignore_errors=True)
    res["summary"] = summarize(res["raw"])
    res["ratios"] = ratios(res["summary"])
    res["workers"] = workers_summary(res["raw"])
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
