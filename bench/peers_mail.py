"""bench/peers.py's STARTTLS row: IMAP and SMTP STARTTLS connections per server CPU-second, the same work per peer.

One connection, for every peer: connect, read the greeting, (SMTP: ``EHLO``), ``STARTTLS``, a full TLS 1.3
mutual handshake with the RSA-2048 ``fort`` card (fresh session), the login (IMAP ``LOGIN``, SMTP ``EHLO`` then
``AUTH PLAIN``), read the first post-login response (the tagged ``OK`` / ``235``), close. Peers:

- ``sniproxy``: its ``imap`` / ``smtp`` listeners (the proxy answers the pre-TLS dialog, connects the backend
  after the handshake, swallows its greeting, relays the login to it);
- ``nginx``: the mail module (``libnginx-mod-mail``), ``starttls only``, ``ssl_verify_client on`` with the same
  card CA file; the login goes to ``auth_http`` (this module's tiny HTTP auth server, which answers
  ``Auth-Status: OK`` with ``Auth-Server``/``Auth-Port`` = the backend), then nginx connects the backend, reads
  its greeting and logs in (IMAP: ``LOGIN`` with literals; SMTP: ``EHLO``, ``xclient off``) and answers the client;
- ``stunnel``: ``protocol = imap`` / ``protocol = smtp`` in server mode (stunnel connects the backend before
  TLS, passes its IMAP greeting, answers ``EHLO``/``STARTTLS`` itself, then relays raw bytes after TLS).

The backend (this module's ``--backend`` process, asyncio + uvloop, one for every peer) speaks just enough IMAP
and SMTP and counts what reached it: IMAP ``LOGIN``\\ s, SMTP sessions past ``EHLO`` and SMTP ``AUTH``\\ s, and
the auth HTTP requests (with nginx's ``Auth-SSL-Verify`` / ``Auth-SSL-Subject`` of the last one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
USER, PASSWORD = "bench.user@hopital.mssante.fr", "bench-password"
BACKEND_LIFE = 3600.0
KINDS = ("imap", "smtp")
COUNTERS = ("imap_conn", "imap_login", "smtp_conn", "smtp_ehlo", "smtp_auth", "auth_http")


# --------------------------------------------------------------------------- backend process (CPU 1)
async def _backend_main(ports: dict[str, int]) -> None:
    counts: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    counts["auth_last"] = {}

    async def line(r: asyncio.StreamReader) -> bytes:
        data = await r.readline()
        if not data:
            raise ConnectionError("eof")
        return data

    async def imap(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        counts["imap_conn"] += 1
        with contextlib.suppress(OSError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            w.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] bench backend ready\r\n")
            while True:
                cmd = await line(r)
                while cmd.endswith(b"}\r\n") and b"{" in cmd:         # literal (nginx: LOGIN {n} user {n} pass)
                    head, _, size = cmd[:-3].rpartition(b"{")
                    n = int(size.rstrip(b"+"))
                    if not size.endswith(b"+"):
                        w.write(b"+ go ahead\r\n")
                    cmd = head + b'"' + (await r.readexactly(n)) + b'"' + await line(r)
                tag, _, rest = cmd.partition(b" ")
                verb = rest.split(b" ", 1)[0].strip().upper()
                if verb == b"LOGIN":
                    counts["imap_login"] += 1
                    w.write(tag + b" OK [CAPABILITY IMAP4rev1] LOGIN completed\r\n")
                elif verb == b"CAPABILITY":
                    w.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK CAPABILITY completed\r\n")
                elif verb == b"NOOP":
                    w.write(tag + b" OK NOOP completed\r\n")
                elif verb == b"LOGOUT":
                    w.write(b"* BYE bye\r\n" + tag + b" OK LOGOUT completed\r\n")
                    await w.drain()
                    break
                else:
                    w.write(tag + b" BAD unknown command\r\n")
                await w.drain()
        w.close()

    async def smtp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        counts["smtp_conn"] += 1
        with contextlib.suppress(OSError, ConnectionError, ValueError):
            w.write(b"220 backend.bench ESMTP ready\r\n")
            while True:
                cmd = await line(r)
                verb = cmd[:4].upper()
                if verb == b"EHLO":
                    counts["smtp_ehlo"] += 1
                    w.write(b"250-backend.bench\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
                elif verb == b"HELO":
                    counts["smtp_ehlo"] += 1
                    w.write(b"250 backend.bench\r\n")
                elif verb == b"AUTH":
                    words = cmd.split()
                    if len(words) == 2 and words[1].upper() == b"PLAIN":
                        w.write(b"334 \r\n")
                        await line(r)
                    elif len(words) == 2 and words[1].upper() == b"LOGIN":
                        w.write(b"334 VXNlcm5hbWU6\r\n")
                        await line(r)
                        w.write(b"334 UGFzc3dvcmQ6\r\n")
                        await line(r)
                    counts["smtp_auth"] += 1
                    w.write(b"235 2.7.0 Authentication successful\r\n")
                elif verb == b"QUIT":
                    w.write(b"221 2.0.0 bye\r\n")
                    await w.drain()
                    break
                else:
                    w.write(b"250 2.0.0 OK\r\n")
                await w.drain()
        w.close()

    async def auth(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """nginx's auth_http: one HTTP/1.0 request per connection; OK + where the backend is."""
        with contextlib.suppress(OSError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            head = await r.readuntil(b"\r\n\r\n")
            hdrs = {k.strip().lower(): v.strip() for k, _, v in
                    (ln.decode("latin-1").partition(":") for ln in head.split(b"\r\n")[1:] if b":" in ln)}
            counts["auth_http"] += 1
            counts["auth_last"] = {k: hdrs.get(k) for k in ("auth-protocol", "auth-user", "auth-ssl",
                                                            "auth-ssl-verify", "auth-ssl-subject")}
            proto = hdrs.get("auth-protocol", "imap")
            ok = hdrs.get("auth-pass") == PASSWORD and hdrs.get("auth-ssl-verify") == "SUCCESS"
            if ok:
                out = (f"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {HOST}\r\n"
                       f"Auth-Port: {ports[proto]}\r\n\r\n")
            else:
                out = "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or card\r\nAuth-Wait: 0\r\n\r\n"
            w.write(out.encode())
            await w.drain()
        w.close()

    async def stats(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(json.dumps(counts).encode())
        with contextlib.suppress(OSError, ConnectionError):
            await w.drain()
        w.close()

    handlers = {"imap": imap, "smtp": smtp, "auth": auth, "stats": stats}
    servers = [await asyncio.start_server(handlers[k], HOST, p, backlog=4096) for k, p in ports.items()]
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not os.read(sys.stdin.fileno(), 1) else None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), BACKEND_LIFE)
    for s in servers:
        s.close()


def backend_entry(spec: str) -> None:
    ports = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_backend_main(ports))


class MailBackend:
    """The backend process: ``ports`` (imap, smtp, auth, stats), ``counts()``, ``stop()``."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.proc = subprocess.Popen([sys.executable, __file__, "--backend",
                                      ",".join(f"{k}={v}" for k, v in ports.items())], stdin=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mail backend exited")
            with contextlib.suppress(OSError), socket.create_connection((HOST, ports["stats"]), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError("mail backend did not listen")

    def counts(self) -> dict[str, Any]:
        with socket.create_connection((HOST, self.ports["stats"]), timeout=5) as s:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return dict(json.loads(data))

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- one client connection
class _Lines:
    """Reply lines from a socket (plain, then TLS), never reading past what the server sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def until(self, done: Any, limit: int = 65536) -> bytes:
        """Read until ``done(line)`` is true for a complete line; return everything read up to it."""
        out = b""
        while True:
            while b"\n" in self.buf:
                ln, _, self.buf = self.buf.partition(b"\n")
                out += ln + b"\n"
                if done(ln + b"\n"):
                    return out
            if len(out) + len(self.buf) > limit:
                raise ConnectionError("reply too long")
            chunk = self.sock.recv(16384)
            if not chunk:
                raise ConnectionError(f"closed after {out[-200:]!r}")
            self.buf += chunk


def one_imap(port: int, ctx: ssl.SSLContext) -> bytes:
    """Greeting, STARTTLS, handshake, LOGIN, the tagged answer (returned)."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        rd = _Lines(raw)
        greet = rd.until(lambda ln: ln.startswith(b"* "))
        if not greet.startswith(b"* OK"):
            raise ConnectionError(f"greeting {greet!r}")
        raw.sendall(b"a STARTTLS\r\n")
        if not rd.until(lambda ln: ln.startswith(b"a ")).split(b"\n")[-2].startswith(b"a OK"):
            raise ConnectionError("STARTTLS refused")
        with ctx.wrap_socket(raw) as s:
            rd = _Lines(s)
            s.sendall(f'b LOGIN "{USER}" "{PASSWORD}"\r\n'.encode())
            return rd.until(lambda ln: ln.startswith(b"b ")).split(b"\n")[-2]


def _final(line: bytes) -> bool:
    """The last line of an SMTP reply (``250 x``, not ``250-x``)."""
    return line[:3].isdigit() and line[3:4] != b"-"


def one_smtp(port: int, ctx: ssl.SSLContext) -> bytes:
    """Greeting, EHLO, STARTTLS, handshake, EHLO, AUTH PLAIN, the answer to AUTH (returned)."""
    with socket.create_connection((HOST, port), timeout=10) as raw:
        rd = _Lines(raw)
        fin = _final
        if not rd.until(fin).split(b"\n")[-2].startswith(b"220"):
            raise ConnectionError("greeting")
        raw.sendall(b"EHLO client.bench\r\n")
        if b"STARTTLS" not in rd.until(fin).upper():
            raise ConnectionError("no STARTTLS")
        raw.sendall(b"STARTTLS\r\n")
        if not rd.until(fin).split(b"\n")[-2].startswith(b"220"):
            raise ConnectionError("STARTTLS refused")
        with ctx.wrap_socket(raw) as s:
            rd = _Lines(s)
            s.sendall(b"EHLO client.bench\r\n")
            rd.until(fin)
            s.sendall(b"AUTH PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
            return rd.until(fin).split(b"\n")[-2]


ONE = {"imap": one_imap, "smtp": one_smtp}
OK = {"imap": b"b OK", "smtp": b"235"}


def client_ctx(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE      # the server certificate is not what is measured; the card is
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    return ctx


def client_entry(spec_json: str) -> None:
    """One load process: ``threads`` threads, each doing connections back to back; bounded in count and time."""
    spec = json.loads(spec_json)
    ctx = client_ctx(spec["cert"], spec["key"])
    one, want = ONE[spec["kind"]], OK[spec["kind"]]
    deadline = time.monotonic() + spec["seconds"]
    lock = threading.Lock()
    state = {"ok": 0, "errors": 0, "budget": spec["max_count"], "last_error": ""}

    def loop() -> None:
        while time.monotonic() < deadline:
            with lock:
                if state["budget"] <= 0:
                    return
                state["budget"] -= 1
            try:
                good = one(spec["port"], ctx).startswith(want)
                err = "" if good else "unexpected answer"
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                good, err = False, f"{type(exc).__name__}: {exc}"[:200]
            with lock:
                state["ok" if good else "errors"] += 1
                state["last_error"] = err or state["last_error"]

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(spec["threads"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(spec["seconds"] + 20)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"ok": state["ok"], "errors": state["errors"], "last_error": state["last_error"],
                      "wall_s": time.monotonic() - t0,
                      "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}))


def measure(t: Any, kind: str, pki: Any, backend: MailBackend, procs: int, threads: int, seconds: float,
            max_count: int, cpu_seconds: Any) -> dict[str, Any]:
    """``procs`` x ``threads`` clients for ``seconds`` on the peer's ``kind`` port; per server CPU-second."""
    card = pki.cards["fort"]
    spec = json.dumps({"kind": kind, "port": t.ports[kind], "cert": str(card.chain), "key": str(card.key),
                       "seconds": seconds, "threads": threads, "max_count": max(1, max_count // procs)})
    b0, bc0 = backend.counts(), cpu_seconds([backend.proc.pid])
    c0, w0 = t.cpu(), time.monotonic()
    running = [subprocess.Popen([sys.executable, __file__, "--client", spec], stdout=subprocess.PIPE, text=True)
               for _ in range(procs)]
    outs: list[dict[str, Any]] = []
    try:
        for p in running:
            out, _ = p.communicate(timeout=seconds + 40)
            with contextlib.suppress(ValueError):
                outs.append(json.loads(out))
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    wall, cpu = time.monotonic() - w0, t.cpu() - c0
    time.sleep(0.2)
    b1, bcpu = backend.counts(), cpu_seconds([backend.proc.pid]) - bc0
    delta = {k: b1[k] - b0[k] for k in COUNTERS}
    n, errors = sum(o["ok"] for o in outs), sum(o["errors"] for o in outs)
    load_wall = max((o["wall_s"] for o in outs), default=wall)
    client_cpu = sum(o["cpu_s"] for o in outs)
    # every counted connection must have reached the backend: IMAP LOGINs; SMTP sessions past EHLO
    reached = delta["imap_login"] if kind == "imap" else delta["smtp_ehlo"]
    return {"ok": n > 0 and errors <= 0.01 * n and reached >= n and len(outs) == procs,
            "connections": n, "errors": errors, "last_error": next((o["last_error"] for o in outs
                                                                    if o["last_error"]), ""),
            "backend": delta, "reached_backend": reached,
            "wall_s": round(load_wall, 3), "server_cpu_s": round(cpu, 3), "client_cpu_s": round(client_cpu, 3),
            "per_s": round(n / load_wall, 1) if load_wall else None,
            "per_server_cpu_s": round(n / cpu, 1) if cpu else None,
            "server_cpu_ms_per_conn": round(1000 * cpu / n, 3) if n else None,
            "server_util": round(cpu / load_wall, 3) if load_wall else None,
            "client_cpu_ms_per_conn": round(1000 * client_cpu / n, 3) if n else None,
            "backend_cpu_ms_per_conn": round(1000 * bcpu / n, 3) if n else None}


def check(t: Any, pki: Any, backend: MailBackend) -> dict[str, Any]:
    """Before the load, per protocol: ``fort`` logs in and the backend counted it; ``unknown-ca`` reaches nothing."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        res: dict[str, Any] = {}
        for card in ("fort", "unknown-ca"):
            ctx = client_ctx(str(pki.cards[card].chain), str(pki.cards[card].key))
            b0 = backend.counts()
            try:
                res[card] = {"answer": ONE[kind](t.ports[kind], ctx).decode(errors="replace").strip()}
            except (OSError, ssl.SSLError, ConnectionError) as exc:
                res[card] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            time.sleep(0.2)
            b1 = backend.counts()
            res[card]["backend"] = {k: b1[k] - b0[k] for k in COUNTERS if b1[k] != b0[k]}
            if b1["auth_http"] != b0["auth_http"]:
                res[card]["auth_http"] = b1["auth_last"]
        fort, bad = res["fort"], res["unknown-ca"]
        reached = fort["backend"].get("imap_login" if kind == "imap" else "smtp_ehlo", 0) == 1
        bad_reached = bool(bad["backend"].get("imap_login") or bad["backend"].get("smtp_ehlo")
                           or bad["backend"].get("auth_http"))
        res["ok"] = (fort.get("answer", "").encode().startswith(OK[kind]) and reached and not bad_reached
                     and not bad.get("answer", "").encode().startswith(OK[kind]))
        out[kind] = res
    out["ok"] = all(out[k]["ok"] for k in KINDS)
    return out


# --------------------------------------------------------------------------- peer configs
def nginx_mail_block(pki: Any, ca: Path, ports: dict[str, int], auth_port: int) -> str:
    """nginx's ``mail {}``: IMAP and SMTP STARTTLS servers, card verified, login through auth_http."""
    s = pki.servers["2bis"]
    tls = (f"ssl_certificate {s.chain}; ssl_certificate_key {s.key}; ssl_client_certificate {ca}; "
           "ssl_verify_client on; ssl_verify_depth 4; ssl_protocols TLSv1.3; starttls only;")
    return f"""mail {{
    auth_http {HOST}:{auth_port}/auth;
    proxy_pass_error_message on;
    server {{ listen {HOST}:{ports["imap"]}; protocol imap; imap_auth plain; {tls} }}
    server {{ listen {HOST}:{ports["smtp"]}; protocol smtp; smtp_auth plain login; xclient off; {tls} }}
}}
"""


def stunnel_mail_services(pki: Any, ca: Path, ports: dict[str, int], backend: dict[str, int]) -> str:
    """stunnel's server-side STARTTLS: ``protocol = imap`` / ``smtp`` services to the same backend."""
    s = pki.servers["2bis"]
    lines = []
    for kind in KINDS:
        lines += [f"[mail-{kind}]", f"accept = {HOST}:{ports[kind]}", f"connect = {HOST}:{backend[kind]}",
                  f"protocol = {kind}", f"cert = {s.chain}", f"key = {s.key}", f"CAfile = {ca}",
                  "verifyChain = yes", "requireCert = yes", "sslVersionMin = TLSv1.3", ""]
    return "\n".join(lines)


def sniproxy_listeners(ports: dict[str, int], backend: dict[str, int]) -> list[dict[str, Any]]:
    from sniproxy.demo.conf import IMAP_NAMES, SMTP_NAMES
    return [{"name": f"mail-{k}", "bind": f"{HOST}:{ports[k]}", "protocol": k, "backend": f"{HOST}:{backend[k]}",
             "hostname": next(iter(names)), "sni": dict(names), "default_flow": "2bis"}
            for k, names in (("imap", IMAP_NAMES), ("smtp", SMTP_NAMES))]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--backend"]:
        backend_entry(sys.argv[2])
    elif sys.argv[1:2] == ["--client"]:
        client_entry(sys.argv[2])
    else:
        sys.exit(__doc__)
