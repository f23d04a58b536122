"""Benchmark: which TLS engine terminates sniproxy's server side.

Candidates, both driven over in-memory BIOs in one process (no network):

* ``stdlib``: ``ssl.SSLContext.wrap_bio`` with ``ssl.MemoryBIO`` (an ``SSLObject``), system OpenSSL;
* ``pyopenssl``: ``OpenSSL.SSL.Connection(ctx, None)`` (``bio_write``/``bio_read``, ``do_handshake``,
  ``WantReadError``), OpenSSL bundled with ``cryptography``;
* ``pyopenssl+cb``: the same with a Python per-depth verify callback (what sniproxy would install to
  collect ``(depth, errno)`` for its stable failure reasons).

The client side is always the stdlib ``ssl`` module with a client card certificate (RSA-2048, EKU
clientAuth), so both engines face the same peer. PKI is generated at run time with ``cryptography``.

What it measures (results to one JSON file):

1. full mutual-TLS handshakes, TLS 1.3 and TLS 1.2 separately, no resumption (the client never offers a
   session), client certificate required and verified against the CA: handshakes per CPU-second of the
   whole process (client + server + pump), and server-side CPU per handshake (``time.process_time``
   around the server-side calls only: object creation, ``bio_write``, ``do_handshake``, ``bio_read``);
   repeated, engines interleaved, median and best reported;
2. memory of idle established server-side connections: N objects, each after a handshake and one small
   server write (an IMAP-like greeting) plus one read attempt that returns want-read, i.e. the state of a
   connection waiting in IDLE. Client peers are freed right after their handshake (in production they are
   remote; keeping them would count both ends). One subprocess per variant so every baseline is clean;
   RSS from ``/proc/self/statm``, before and after ``gc.collect()``;
3. capabilities: client CA names sent in CertificateRequest (seen by a pyOpenSSL client, and cross-checked
   with ``openssl s_client -unix`` against a server on a Unix socket when the binary exists), per-depth
   verify callback, per-connection verify mode, verified chain access, delta-CRL flag.

Run: ``python bench/tls_engine.py --out bench/results/tls_engine.json`` (about 1 minute on 2 cores,
bounded under 3); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cryptography
import OpenSSL
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

SERVER_NAME = "imap.mssante.example.test"
GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"
VERSIONS = {
    "TLSv1.3": (ssl.TLSVersion.TLSv1_3, SSL.TLS1_3_VERSION),
    "TLSv1.2": (ssl.TLSVersion.TLSv1_2, SSL.TLS1_2_VERSION),
}
X509_V_FLAG_USE_DELTAS = 0x2000  # openssl/x509_vfy.h; pyOpenSSL's X509StoreFlags has no name for it
PAGE = os.sysconf("SC_PAGE_SIZE")
pt = time.process_time


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_cert: x509.Certificate
    server_cert: x509.Certificate
    server_key: rsa.RSAPrivateKey
    client_cert: x509.Certificate

    def p(self, name: str) -> str:
        return str(self.dir / name)


def _name(*rdns: tuple[Any, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in rdns])


def _cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    eku: list[x509.ObjectIdentifier] | None = None,
    san: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        usage = dict(key_cert_sign=True, crl_sign=True, digital_signature=False)
    else:
        usage = dict(key_cert_sign=False, crl_sign=False, digital_signature=True)
    b = b.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=not ca,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usage,
        ),
        critical=True,
    )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, *items: x509.Certificate | rsa.RSAPrivateKey) -> None:
    with path.open("wb") as f:
        for it in items:
            if isinstance(it, x509.Certificate):
                f.write(it.public_bytes(serialization.Encoding.PEM))
            else:
                f.write(
                    it.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )


def make_pki(d: Path) -> Pki:
    """CA, server cert and a client 'card' cert (DN shaped like an IGC Santé card), all RSA-2048;
    plus a rogue CA and card for the failure path of the verify-callback check."""
    ca_key, srv_key, cli_key, rogue_ca_key, rogue_key = (_key() for _ in range(5))
    ca_name = _name(
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, "BENCH-SANTE"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 187512751"),
        (NameOID.COMMON_NAME, "BENCH AC IGC-SANTE FORT PERSONNES"),
    )
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    srv = _cert(
        _name((NameOID.COMMON_NAME, SERVER_NAME)),
        srv_key,
        ca_name,
        ca_key,
        ca=False,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=SERVER_NAME,
    )
    card = _name(
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, "CENTRE HOSPITALIER BENCH"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "0002 000000000"),
        (NameOID.COMMON_NAME, "810000000001/0000000001"),
    )
    cli = _cert(card, cli_key, ca_name, ca_key, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    rogue_name = _name((NameOID.COMMON_NAME, "ROGUE CA"))
    rogue_ca = _cert(rogue_name, rogue_ca_key, rogue_name, rogue_ca_key, ca=True)
    rogue = _cert(card, rogue_key, rogue_name, rogue_ca_key, ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write(d / "ca.pem", ca)
    _write(d / "server.pem", srv, srv_key)
    _write(d / "client.pem", cli, cli_key)
    _write(d / "client.crt", cli)
    _write(d / "client.key", cli_key)
    _write(d / "rogue.pem", rogue, rogue_key)
    del rogue_ca
    return Pki(d, ca, srv, srv_key, cli)


# --------------------------------------------------------------------------- contexts


def client_ctx(pki: Pki, version: str, cert: str | None = "client.pem") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version][0]
    ctx.load_verify_locations(pki.p("ca.pem"))
    if cert:
        ctx.load_cert_chain(pki.p(cert))
    return ctx


def stdlib_server_ctx(pki: Pki, version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ctx.maximum_version = VERSIONS[version][0]
    ctx.load_cert_chain(pki.p("server.pem"))
    ctx.load_verify_locations(pki.p("ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # TLS 1.3: no NewSessionTicket at all (pyOpenSSL has no setter, see results)
    return ctx


def _accept_cb(_conn: SSL.Connection, _cert: Any, _errno: int, _depth: int, ok: int) -> bool:
    return bool(ok)


def pyopenssl_server_ctx(
    pki: Pki,
    version: str,
    *,
    release_buffers: bool = False,
    callback: Callable[..., bool] | None = None,
    client_ca: bool = True,
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    v = VERSIONS[version][1]
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.use_certificate(pki.server_cert)
    ctx.use_privatekey(pki.server_key)
    ctx.check_privatekey()
    ctx.load_verify_locations(pki.p("ca.pem"))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, callback)
    if client_ca:
        ctx.add_client_ca(pki.ca_cert)  # the CA names sent in CertificateRequest
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(b"sniproxy-bench")
    if release_buffers:
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


# --------------------------------------------------------------------------- engines (server side)


class StdlibServer:
    __slots__ = ("inc", "obj", "out")

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)

    def feed(self, data: bytes) -> None:
        self.inc.write(data)

    def handshake(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def drain(self) -> bytes:
        return self.out.read()

    def send(self, data: bytes) -> None:
        self.obj.write(data)

    def try_read(self) -> bytes:
        try:
            return self.obj.read(16384)
        except ssl.SSLWantReadError:
            return b""

    def info(self) -> dict[str, Any]:
        return {
            "version": self.obj.version(),
            "cipher": self.obj.cipher()[0],
            "group": None,
            "peer_verified": bool(self.obj.getpeercert()),
        }


class PyOpenSSLServer:
    __slots__ = ("conn",)

    def __init__(self, ctx: SSL.Context) -> None:
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_accept_state()

    def feed(self, data: bytes) -> None:
        self.conn.bio_write(data)

    def handshake(self) -> bool:
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    def drain(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self.conn.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(chunks)

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def try_read(self) -> bytes:
        try:
            return self.conn.recv(16384)
        except SSL.WantReadError:
            return b""

    def info(self) -> dict[str, Any]:
        return {
            "version": self.conn.get_protocol_version_name(),
            "cipher": self.conn.get_cipher_name(),
            "group": self.conn.get_group_name(),
            "peer_verified": self.conn.get_peer_certificate() is not None,
        }


Server = StdlibServer | PyOpenSSLServer


def server_factory(
    engine: str, pki: Pki, version: str, release_buffers: bool = False
) -> Callable[[], Server]:
    if engine == "stdlib":
        sctx = stdlib_server_ctx(pki, version)
        return lambda: StdlibServer(sctx)
    cb = _accept_cb if engine == "pyopenssl+cb" else None
    pctx = pyopenssl_server_ctx(pki, version, release_buffers=release_buffers, callback=cb)
    return lambda: PyOpenSSLServer(pctx)


@dataclass
class Pair:
    server: Server
    client: ssl.SSLObject
    c_in: ssl.MemoryBIO
    c_out: ssl.MemoryBIO
    server_cpu: float
    final_flight_bytes: int  # what the server wrote in the call that completed its handshake


def handshake(new_server: Callable[[], Server], cctx: ssl.SSLContext) -> Pair:
    """One full handshake, pumped in memory. Server-side CPU is summed around server calls only."""
    t = pt()
    srv = new_server()
    s_cpu = pt() - t
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = cctx.wrap_bio(c_in, c_out, server_hostname=SERVER_NAME)
    c_done = s_done = False
    final = 0
    for _ in range(16):  # 2 round trips suffice; bounded in case of a bug
        if not c_done:
            try:
                cli.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        data = c_out.read()
        t = pt()
        if data:
            srv.feed(data)
        was_done = s_done
        if not s_done:
            s_done = srv.handshake()
        out = srv.drain()
        s_cpu += pt() - t
        if s_done and not was_done:
            final = len(out)
        if out:
            c_in.write(out)
        if c_done and s_done and not data and not out:
            break
    else:
        raise RuntimeError("handshake did not converge")
    return Pair(srv, cli, c_in, c_out, s_cpu, final)


# --------------------------------------------------------------------------- throughput


def throughput_once(engine: str, pki: Pki, version: str, count: int, max_s: float) -> dict[str, float]:
    new_server = server_factory(engine, pki, version)
    cctx = client_ctx(pki, version)
    handshake(new_server, cctx)  # warm-up (lazy init in OpenSSL)
    gc.collect()
    n, s_cpu = 0, 0.0
    w0, c0 = time.perf_counter(), pt()
    deadline = w0 + max_s
    while n < count and time.perf_counter() < deadline:
        pair = handshake(new_server, cctx)
        s_cpu += pair.server_cpu
        n += 1
    cpu = pt() - c0
    wall = time.perf_counter() - w0
    return {
        "n": n,
        "cpu_s": cpu,
        "wall_s": wall,
        "hs_per_cpu_s": n / cpu,
        "server_ms_per_hs": 1000 * s_cpu / n,
        "server_hs_per_cpu_s": n / s_cpu,
        "other_ms_per_hs": 1000 * (cpu - s_cpu) / n,
    }


def throughput(pki: Pki, engines: list[str], reps: int, count: int, max_s: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for version in VERSIONS:
        runs: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
        for _ in range(reps):
            for e in engines:  # interleaved: drift on a noisy machine hits every engine alike
                runs[e].append(throughput_once(e, pki, version, count, max_s))
        for e in engines:
            rs = runs[e]
            res.setdefault(version, {})[e] = {
                "runs": rs,
                "median_hs_per_cpu_s": statistics.median(r["hs_per_cpu_s"] for r in rs),
                "best_hs_per_cpu_s": max(r["hs_per_cpu_s"] for r in rs),
                "median_server_ms_per_hs": statistics.median(r["server_ms_per_hs"] for r in rs),
                "best_server_ms_per_hs": min(r["server_ms_per_hs"] for r in rs),
                "median_server_hs_per_cpu_s": statistics.median(r["server_hs_per_cpu_s"] for r in rs),
                "median_client_and_pump_ms_per_hs": statistics.median(r["other_ms_per_hs"] for r in rs),
            }
    return res


# --------------------------------------------------------------------------- memory (child process)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def establish_idle(new_server: Callable[[], Server], cctx: ssl.SSLContext) -> Server:
    pair = handshake(new_server, cctx)
    srv = pair.server
    srv.send(GREETING)
    pair.c_in.write(srv.drain())
    if pair.client.read(4096) != GREETING:
        raise RuntimeError("greeting not received")
    if srv.try_read() != b"":  # the state of a connection waiting for the client (IMAP IDLE)
        raise RuntimeError("unexpected data")
    return srv  # the client peer is dropped here


def memory_child(engine: str, version: str, release_buffers: bool, n: int, pki_dir: str) -> dict[str, Any]:
    pki = load_pki(Path(pki_dir))
    new_server = server_factory(engine, pki, version, release_buffers)
    cctx = client_ctx(pki, version)
    warm = [establish_idle(new_server, cctx) for _ in range(50)]  # arenas, lazy OpenSSL init
    del warm
    gc.collect()
    r0 = rss()
    t0 = time.perf_counter()
    kept = []
    for _ in range(n):
        kept.append(establish_idle(new_server, cctx))
        if time.perf_counter() - t0 > 60:
            break
    r1 = rss()
    gc.collect()
    r2 = rss()
    k = len(kept)
    return {
        "engine": engine,
        "version": version,
        "release_buffers": release_buffers,
        "n": k,
        "rss_before_kib": r0 // 1024,
        "rss_after_kib": r2 // 1024,
        "kib_per_conn_before_gc": (r1 - r0) / k / 1024,
        "kib_per_conn": (r2 - r0) / k / 1024,
        "build_s": time.perf_counter() - t0,
    }


def load_pki(d: Path) -> Pki:
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    data = (d / "server.pem").read_bytes()
    srv = x509.load_pem_x509_certificate(data)
    key = serialization.load_pem_private_key(data, None)
    cli = x509.load_pem_x509_certificate((d / "client.crt").read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey)
    return Pki(d, ca, srv, key, cli)


def memory(pki: Pki, n: int, versions: list[str]) -> list[dict[str, Any]]:
    variants = [("stdlib", False), ("pyopenssl", False), ("pyopenssl", True)]
    out = []
    for version in versions:
        for engine, rb in variants:
            cmd = [
                sys.executable,
                __file__,
                "--mem-child",
                engine,
                version,
                "1" if rb else "0",
                str(n),
                str(pki.dir),
            ]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
            out.append(json.loads(p.stdout))
            print(
                f"  memory {version} {engine} release_buffers={rb}: {out[-1]['kib_per_conn']:.1f} KiB/conn",
                file=sys.stderr,
            )
    return out


# --------------------------------------------------------------------------- capabilities


def _pyopenssl_client(pki: Pki, version: str, cert: str = "client") -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    v = VERSIONS[version][1]
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.use_certificate_file(pki.p(f"{cert}.pem"))
    ctx.use_privatekey_file(pki.p(f"{cert}.pem"))
    ctx.load_verify_locations(pki.p("ca.pem"))
    ctx.set_verify(SSL.VERIFY_PEER)
    c = SSL.Connection(ctx, None)
    c.set_tlsext_host_name(SERVER_NAME.encode())
    c.set_connect_state()
    return c


def _pump_pyopenssl_client(cli: SSL.Connection, srv: Server) -> None:
    c_done = s_done = False
    for _ in range(16):
        if not c_done:
            try:
                cli.do_handshake()
                c_done = True
            except SSL.WantReadError:
                pass
        data = b""
        while True:
            try:
                data += cli.bio_read(65536)
            except SSL.WantReadError:
                break
        if data:
            srv.feed(data)
        if not s_done:
            s_done = srv.handshake()
        out = srv.drain()
        if out:
            cli.bio_write(out)
        if c_done and s_done and not data and not out:
            return
    raise RuntimeError("handshake did not converge")


def ca_names_seen_by_client(pki: Pki, engine: str, version: str) -> list[str]:
    srv: Server
    if engine == "stdlib":
        srv = StdlibServer(stdlib_server_ctx(pki, version))
    else:
        srv = PyOpenSSLServer(pyopenssl_server_ctx(pki, version))
    cli = _pyopenssl_client(pki, version)
    _pump_pyopenssl_client(cli, srv)
    return [n.rfc4514_string() for n in cli.get_client_ca_list(as_cryptography=True)]


def s_client_check(pki: Pki, engine: str, version: str) -> dict[str, Any]:
    """Cross-check with `openssl s_client -unix` (system OpenSSL) against a one-shot server on a Unix
    socket: what does the CertificateRequest carry?"""
    exe = shutil.which("openssl")
    if not exe:
        return {"skipped": "no openssl binary"}
    path = str(pki.dir / f"s-{engine}-{version}.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    lsock.settimeout(15)
    err: list[str] = []

    def serve() -> None:
        try:
            conn, _ = lsock.accept()
            conn.setblocking(True)  # pyOpenSSL uses the fd itself: no Python-level timeout
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 15, 0))
            with conn:
                if engine == "stdlib":
                    with stdlib_server_ctx(pki, version).wrap_socket(conn, server_side=True) as s:
                        s.sendall(b"ok\n")
                else:
                    c = SSL.Connection(pyopenssl_server_ctx(pki, version), conn)
                    c.set_accept_state()
                    c.do_handshake()
                    c.sendall(b"ok\n")
                    c.shutdown()
        except Exception as e:
            err.append(repr(e))

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    flag = "-tls1_3" if version == "TLSv1.3" else "-tls1_2"
    p = subprocess.run(
        [
            exe,
            "s_client",
            "-unix",
            path,
            flag,
            "-servername",
            SERVER_NAME,
            "-cert",
            pki.p("client.crt"),
            "-key",
            pki.p("client.key"),
            "-CAfile",
            pki.p("ca.pem"),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    th.join(20)
    lsock.close()
    lines = p.stdout.splitlines()
    names: list[str] = []
    sent: bool | None = None
    for i, line in enumerate(lines):
        if line.startswith("No client certificate CA names sent"):
            sent = False
        elif line.startswith("Acceptable client certificate CA names"):
            sent = True
            for nxt in lines[i + 1 :]:
                if not nxt or nxt.startswith(("Requested", "Client Certificate Types", "Peer", "Server")):
                    break
                names.append(nxt.strip())
    return {"ca_names_sent": sent, "names": names, "server_error": err or None}


def verify_callback_check(pki: Pki, version: str) -> dict[str, Any]:
    seen: list[tuple[int, int, int]] = []

    def cb(_c: SSL.Connection, _cert: Any, errno: int, depth: int, ok: int) -> bool:
        seen.append((depth, errno, ok))
        return bool(ok)

    res: dict[str, Any] = {}
    for label, cert in (("good_card", "client.pem"), ("rogue_card", "rogue.pem")):
        seen.clear()
        ctx = pyopenssl_server_ctx(pki, version, callback=cb)
        try:
            pair = handshake(lambda ctx=ctx: PyOpenSSLServer(ctx), client_ctx(pki, version, cert))
            conn = pair.server.conn  # type: ignore[union-attr]
            chain = conn.get_verified_chain(as_cryptography=True) or []
            outcome = {"handshake": "ok", "verified_chain": [c.subject.rfc4514_string() for c in chain]}
        except (SSL.Error, ssl.SSLError) as e:
            outcome = {"handshake": f"failed: {type(e).__name__}"}
        outcome["callback_calls_depth_errno_ok"] = list(seen)
        res[label] = outcome
    # stdlib: no callback; only the final error is visible (verify_code/verify_message of one depth)
    try:
        handshake(
            lambda: StdlibServer(stdlib_server_ctx(pki, version)), client_ctx(pki, version, "rogue.pem")
        )
        res["stdlib_rogue_card"] = {"handshake": "ok?!"}
    except ssl.SSLCertVerificationError as e:
        res["stdlib_rogue_card"] = {
            "handshake": "failed",
            "verify_code": e.verify_code,
            "verify_message": e.verify_message,
        }
    except ssl.SSLError as e:
        res["stdlib_rogue_card"] = {"handshake": f"failed: {e.reason}"}
    return res


def per_connection_verify_check(pki: Pki, version: str) -> dict[str, Any]:
    """pyOpenSSL: context says VERIFY_NONE, the connection is switched to VERIFY_PEER|FAIL_IF_NO_PEER_CERT
    before the handshake; a client without a certificate must then be refused."""
    ctx = pyopenssl_server_ctx(pki, version)
    ctx.set_verify(SSL.VERIFY_NONE)

    def new() -> PyOpenSSLServer:
        s = PyOpenSSLServer(ctx)
        s.conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        return s

    try:
        pair = handshake(new, client_ctx(pki, version, cert=None))
        # TLS 1.3: the client finishes first; the server's refusal is visible on the server side
        got = "accepted" if pair.server.handshake() else "pending"
    except (SSL.Error, ssl.SSLError) as e:
        got = f"refused: {type(e).__name__}"
    return {
        "pyopenssl_connection_set_verify": got,
        "stdlib": "no per-connection verify setter; SSLObject.context setter is SSL_set_SSL_CTX "
        "(swaps certificate, not verify mode/store/CA list)",
    }


def stdlib_ctx_mode(ctx: ssl.SSLContext) -> dict[str, Any]:
    """Read SSL_CTX_get_mode() of a stdlib context through ctypes (CPython 3.11 layout: the SSL_CTX*
    is the first field after PyObject_HEAD). Answers: does stdlib release idle buffers? (bpo-25672)"""
    try:
        import ctypes

        lib = ctypes.CDLL("libssl.so.3")
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if lib.SSL_CTX_get_verify_mode(ptr) != 3:  # PEER|FAIL_IF_NO_PEER_CERT: proves the pointer is right
            return {"skipped": "layout check failed"}
        mode = lib.SSL_CTX_ctrl(ptr, 33, 0, None)  # SSL_CTRL_MODE
    except (OSError, AttributeError, ValueError) as e:
        return {"skipped": repr(e)}
    return {"mode": hex(mode), "release_buffers": bool(mode & SSL.MODE_RELEASE_BUFFERS)}


def capabilities(pki: Pki) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    for version in VERSIONS:
        caps[version] = {
            "ca_names_seen_by_pyopenssl_client": {
                "stdlib (load_verify_locations only)": ca_names_seen_by_client(pki, "stdlib", version),
                "pyopenssl (add_client_ca)": ca_names_seen_by_client(pki, "pyopenssl", version),
            },
            "s_client_unix_socket": {e: s_client_check(pki, e, version) for e in ("stdlib", "pyopenssl")},
            "verify_callback": verify_callback_check(pki, version),
            "per_connection_verify": per_connection_verify_check(pki, version),
        }
    pair = handshake(lambda: StdlibServer(stdlib_server_ctx(pki, "TLSv1.3")), client_ctx(pki, "TLSv1.3"))
    sobj = pair.server.obj  # type: ignore[union-attr]
    priv = getattr(sobj._sslobj, "get_verified_chain", None)
    caps["stdlib_verified_chain"] = {
        "public_SSLObject.get_verified_chain": hasattr(sobj, "get_verified_chain"),
        "private__sslobj.get_verified_chain": None if priv is None else len(priv()),
        "note": "public in Python 3.13+; on 3.11 only the private _sslobj method",
    }
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.verify_flags |= X509_V_FLAG_USE_DELTAS
    caps["delta_crl_flag"] = {
        "stdlib verify_flags accepts raw 0x2000": bool(sctx.verify_flags & X509_V_FLAG_USE_DELTAS),
        "pyopenssl X509StoreFlags has USE_DELTAS": hasattr(OpenSSL.crypto.X509StoreFlags, "USE_DELTAS"),
        "pyopenssl X509Store.set_flags(int)": "accepts any int",
    }
    caps["stdlib_ssl_ctx_mode"] = stdlib_ctx_mode(stdlib_server_ctx(pki, "TLSv1.3"))
    return caps


# --------------------------------------------------------------------------- main


def negotiated(pki: Pki) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for version in VERSIONS:
        for e in ("stdlib", "pyopenssl"):
            pair = handshake(server_factory(e, pki, version), client_ctx(pki, version))
            try:  # let the client consume whatever followed (TLS 1.3 NewSessionTicket)
                pair.client.read(1)
            except ssl.SSLWantReadError:
                pass
            sess = pair.client.session
            out[f"{version}/{e}"] = {
                **pair.server.info(),
                "server_final_flight_bytes": pair.final_flight_bytes,
                "client_got_ticket": bool(sess and sess.has_ticket),
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/tls_engine.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: few handshakes, N=200")
    ap.add_argument("--mem-n", type=int, default=2000)
    ap.add_argument("--mem-versions", default="TLSv1.3,TLSv1.2")
    ap.add_argument("--mem-child", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mem_child:
        engine, version, rb, n, d = a.mem_child
        print(json.dumps(memory_child(engine, version, rb == "1", int(n), d)))
        return 0
    reps, count, max_s, mem_n = (3, 300, 2.5, a.mem_n) if not a.quick else (1, 20, 1.0, 200)
    engines = ["stdlib", "pyopenssl", "pyopenssl+cb"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tls-engine-") as d:
        pki = make_pki(Path(d))
        print("capabilities...", file=sys.stderr)
        caps = capabilities(pki)
        neg = negotiated(pki)
        print("throughput...", file=sys.stderr)
        thr = throughput(pki, engines, reps, count, max_s)
        for v, per in thr.items():
            for e, r in per.items():
                print(
                    f"  {v} {e:13s} {r['median_hs_per_cpu_s']:6.1f} hs/CPU-s (whole), "
                    f"server {r['median_server_ms_per_hs']:.3f} ms/hs",
                    file=sys.stderr,
                )
        print("memory...", file=sys.stderr)
        mem = memory(pki, mem_n, a.mem_versions.split(","))
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "openssl": {
            "stdlib": ssl.OPENSSL_VERSION,
            "pyopenssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
            "pyopenssl_version": OpenSSL.__version__,
            "cryptography_version": cryptography.__version__,
        },
        "method": {
            "reps": reps,
            "handshakes_per_rep": count,
            "max_s_per_rep": max_s,
            "keys": "RSA-2048 everywhere (CA, server, client card), SHA-256 signatures, one-level chain",
            "client": "stdlib ssl for every engine",
            "resumption": "none (client never offers a session)",
            "tickets": (
                "stdlib num_tickets=0 (none sent); pyOpenSSL has no set_num_tickets, so with "
                "OP_NO_TICKET+SESS_CACHE_OFF it still sends 2 useless stateful TLS 1.3 tickets "
                "(server_final_flight_bytes): a small cost counted against pyOpenSSL"
            ),
        },
        "negotiated": neg,
        "throughput": thr,
        "memory_idle": mem,
        "capabilities": caps,
        "elapsed_s": time.perf_counter() - t0,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out} in {result['elapsed_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
