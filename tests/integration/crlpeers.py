"""Real CRL servers for the integration tests: an HTTP server (stdlib, threaded) and OpenLDAP slapd.

The HTTP server serves CRL bytes by path with an ETag, answers conditional requests with 304, and
can misbehave on purpose per path (HTML page, HTTP 500, truncated body, oversized body, trickle).
slapd runs from its own temporary slapd.conf on a free loopback port, with one entry per CA
holding ``certificateRevocationList;binary`` and ``deltaRevocationList;binary``; tests change them
with ldap3 as the directory manager, as a CA publishing a new CRL would.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.integration.proxyproc import terminate

HOST = "127.0.0.1"


@dataclass
class _Served:
    body: bytes
    mode: str = "ok"          # ok | html | error500 | truncate | oversize | trickle | zeros
    size: int = 0             # zeros: how many zero bytes the body claims and streams


@dataclass
class CrlHttpServer:
    """A threaded HTTP/1.1 server of CRLs on loopback."""

    server: ThreadingHTTPServer
    thread: threading.Thread
    files: dict[str, _Served] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, int] = field(default_factory=dict)      # body bytes written per path (zeros mode)
    handler: type[BaseHTTPRequestHandler] | None = None
    down: bool = False

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}/{path.lstrip('/')}"

    def publish(self, path: str, body: bytes, mode: str = "ok", size: int = 0) -> str:
        """Serve ``body`` at ``path`` (replacing what was there); returns the URL.

        ``mode="zeros"`` answers ``size`` zero bytes instead (a CA server gone mad, or a disk image)."""
        with self.lock:
            self.files["/" + path.lstrip("/")] = _Served(body, mode, size)
        return self.url(path)

    def go_down(self) -> None:
        """Stop listening (connections are refused) but keep what is published: ``come_up()`` resumes."""
        if not self.down:
            self.down = True
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)

    def come_up(self) -> None:
        """Listen again on the same port after ``go_down()``."""
        if self.down:
            assert self.handler is not None
            port = self.port
            self.server = ThreadingHTTPServer((HOST, port), self.handler)
            self.server.daemon_threads = True
            self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                           daemon=True)
            self.thread.start()
            self.down = False

    def hits(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"] == "/" + path.lstrip("/")]

    def stop(self) -> None:
        self.go_down()


def start_http_server(port: int = 0) -> CrlHttpServer:
    """Start the server on ``port`` (0: a free one) in a daemon thread."""
    holder: dict[str, CrlHttpServer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            srv = holder["srv"]
            with srv.lock:
                served = srv.files.get(self.path)
                srv.requests.append({"path": self.path, "if_none_match": self.headers.get("If-None-Match"),
                                     "at": time.time()})
            if served is None:
                self.send_error(404)
                return
            etag = '"' + hashlib.sha256(served.body).hexdigest()[:16] + '"'
            mode, body = served.mode, served.body
            if mode == "ok" and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "error500":
                self.send_error(500)
                return
            if mode == "zeros":
                self._zeros(srv, served.size)
                return
            if mode == "html":
                body = b"<html><body><h1>Maintenance</h1></body></html>"
            if mode == "oversize":
                body = body * 64
            self.send_response(200)
            self.send_header("Content-Type", "text/html" if mode == "html" else "application/pkix-crl")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            if mode == "trickle":
                # One byte every 0.2 s, at most 100 bytes (20 s): bounded, and slower than any test timeout.
                for b in body[:100]:
                    try:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.2)
                self.close_connection = True
                return
            self.wfile.write(body)

        def _zeros(self, srv: CrlHttpServer, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/pkix-crl")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk, n = bytes(1 << 20), 0
            try:
                while n < size:
                    n += self.wfile.write(chunk[: size - n]) or 0
            except OSError:
                pass   # the client gave up: how far it read is what the caller wants to know
            finally:
                with srv.lock:
                    srv.sent[self.path] = srv.sent.get(self.path, 0) + n
            self.close_connection = True

    server = ThreadingHTTPServer((HOST, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    srv = CrlHttpServer(server, thread, handler=Handler)
    holder["srv"] = srv
    thread.start()
    return srv


class SlapdStartError(RuntimeError):
    """slapd could not be started."""


@dataclass
class Slapd:
    """A private slapd: suffix ``dc=example,dc=test``, manager ``cn=admin,dc=example,dc=test`` / adminpw."""

    directory: Path
    port: int
    proc: subprocess.Popen[bytes]
    suffix: str = "dc=example,dc=test"
    admin: str = "cn=admin,dc=example,dc=test"
    password: str = "adminpw"

    def dn(self, cn: str) -> str:
        return f"cn={cn},{self.suffix}"

    def url(self, cn: str, attribute: str = "certificateRevocationList;binary") -> str:
        """An RFC 4516 URL of the entry ``cn`` (spaces percent-encoded as CAs publish them)."""
        return (f"ldap://{HOST}:{self.port}/{self.dn(cn).replace(' ', '%20')}?{attribute}?base?"
                "objectClass=cRLDistributionPoint")

    def put(self, cn: str, *, base: bytes | None = None, delta: bytes | None = None) -> None:
        """Create or replace the entry ``cn`` with the given base and delta CRLs (None: attribute absent)."""
        import ldap3

        conn = ldap3.Connection(ldap3.Server(HOST, port=self.port, get_info=ldap3.NONE),
                                self.admin, self.password, auto_bind=True)
        try:
            dn = self.dn(cn)
            conn.delete(dn)  # type: ignore[no-untyped-call]  # absent the first time: the result code is ignored on purpose
            attrs: dict[str, Any] = {"cn": cn}
            if base is not None:
                attrs["certificateRevocationList;binary"] = base
            if delta is not None:
                attrs["deltaRevocationList;binary"] = delta
            if not conn.add(dn, ["cRLDistributionPoint"], attrs):  # type: ignore[no-untyped-call]
                raise SlapdStartError(f"ldap add {dn}: {conn.result}")
        finally:
            conn.unbind()

    def stop(self) -> None:
        terminate(self.proc)

    def restart(self) -> None:
        """Start slapd again after ``stop()``: same port, config and database."""
        self.stop()
        self.proc = _launch_slapd(self.directory, self.port)


def start_slapd(directory: Path) -> Slapd:
    """Start slapd in the foreground (``-d 0``) on a free loopback port from its own config."""
    slapadd = shutil.which("slapadd") or "/usr/sbin/slapadd"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "db").mkdir(exist_ok=True)
    conf = directory / "slapd.conf"
    conf.write_text(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
pidfile {directory}/slapd.pid
argsfile {directory}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 104857600
suffix "dc=example,dc=test"
rootdn "cn=admin,dc=example,dc=test"
rootpw adminpw
directory {directory}/db
access to * by * read
""")
    seed = directory / "seed.ldif"
    seed.write_text("dn: dc=example,dc=test\nobjectClass: dcObject\nobjectClass: organization\n"
                    "dc: example\no: Example\n")
    r = subprocess.run([slapadd, "-f", str(conf), "-l", str(seed)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise SlapdStartError(f"slapadd failed: {r.stderr.strip()}")
    port = free_port()
    return Slapd(directory, port, _launch_slapd(directory, port))


def _launch_slapd(directory: Path, port: int) -> subprocess.Popen[bytes]:
    slapd = shutil.which("slapd") or "/usr/sbin/slapd"
    with open(directory / "slapd.log", "ab") as log:
        proc = subprocess.Popen([slapd, "-f", str(directory / "slapd.conf"), "-h", f"ldap://{HOST}:{port}/",
                                 "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlapdStartError(f"slapd exited {proc.returncode}: {(directory / 'slapd.log').read_text()[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SlapdStartError("slapd did not listen within 15 s")
