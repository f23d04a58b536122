"""The soak's traffic: one thread per driver, each bounded in count and time, each from its own address.

Every TCP connection a driver opens is one record (``Recorder.add``) with what the client saw: the
driver, its source address and port, when, the outcome, latencies, and what it sent (message ids,
request ids). ``soak.report`` matches these records with the proxy's ``connection`` events.
"""

from __future__ import annotations

import imaplib
import json
import random
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

from soak import clients
from soak.stack import CARDS, HTTPS_NAMES, IMAP_NAMES, MAILBOX, REVOKED_MID_RUN, SMTP_NAMES, STALE_CARD, Stack

GOOD_CARDS = ("cps-2ter", "fort")          # IGC CPS and IGC Santé: both PKIs
#: Refused cards and the reason the proxy must give (None: no certificate at all).
BAD_CARDS: dict[str | None, str] = {"revoked": "revoked", "expired": "expired", "unknown-ca": "unknown_ca",
                                    "self-signed": "self_signed", "wrong-eku": "wrong_usage",
                                    None: "no_client_cert"}
# (The SHA-1 and RSA-1024 cards are left out: Python's own client refuses to load them at its security level.)
#: Source address prefix of each driver (the last byte is the thread number).
SOURCES = {"imap": "127.0.10", "idle": "127.0.11", "smtp": "127.0.12", "https": "127.0.13", "hostile": "127.0.14",
           "slow": "127.0.15", "probe": "127.0.16", "held": "127.0.17", "readback": "127.0.18",
           "stale": "127.0.19"}
MAX_ITERATIONS = 100_000                   # per driver thread: the time bound comes first in practice
CLIENT_ERRORS = (OSError, ssl.SSLError, imaplib.IMAP4.error, smtplib.SMTPException, EOFError, ValueError)


class Recorder:
    """Appends one JSON line per connection attempt to a file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "a")  # closed by close()

    def add(self, rec: dict[str, Any]) -> None:
        """Write one record."""
        line = json.dumps(rec, default=str)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._fh.close()


@dataclass
class Ctx:
    """What every driver shares."""

    stack: Stack
    rec: Recorder
    stop: threading.Event
    seed: int
    idle_hold: float


def _record(driver: str, src: str, **kw: Any) -> dict[str, Any]:
    return {"driver": driver, "src": src, "sport": None, "t0": time.time(), **kw}


def _finish(ctx: Ctx, r: dict[str, Any], outcome: str, detail: str = "") -> None:
    r["t1"] = time.time()
    r["outcome"] = outcome
    if detail:
        r["detail"] = detail[:300]
    ctx.rec.add(r)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _tls_refusal(exc: BaseException) -> bool:
    """The client was refused at TLS level (an alert), as a refused card is."""
    text = str(exc)
    return isinstance(exc, ssl.SSLError) or "ALERT" in text or "alert" in text


def _bye(exc: BaseException) -> bool:
    text = str(exc)
    return "BYE" in text or "UNAVAILABLE" in text or "shutting down" in text.lower()


# ------------------------------------------------------------------------------------------------ IMAP
def _imap_session(ctx: Ctx, driver: str, src: str, rng: random.Random, card: str, hold: float = 0.0,
                  until: Callable[[], bool] | None = None) -> None:
    implicit = rng.random() < 0.5
    sni = rng.choice([*IMAP_NAMES, None])
    port = ctx.stack.ports.imaps if implicit else ctx.stack.ports.imap
    r = _record(driver, src, kind="imap", listener="imaps" if implicit else "imap", card=card, sni=sni)
    t0 = time.monotonic()
    m: clients.Imap | None = None
    stage = "connect"
    try:
        m = clients.imap_open(port, src, ctx.stack.pki, card, sni, implicit, r)
        r["hs_ms"] = (time.monotonic() - t0) * 1000
        stage = "login"
        t1 = time.monotonic()
        clients.external(m)
        typ, data = m.select("INBOX")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"SELECT {data!r}")
        count = int(data[0] or 0)
        if count:
            m.fetch(f"{max(1, count - 2)}:{count}", "(FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        r["req_ms"] = (time.monotonic() - t1) * 1000
        if hold > 0:
            stage = "idle"
            _idle(m, hold, ctx.stop, until)
        stage = "logout"
        typ, _ = m.logout()
        _finish(ctx, r, "completed" if typ == "BYE" else "logout_" + typ)
    except CLIENT_ERRORS as exc:
        # imaplib keeps an untagged BYE aside and reports the EOF after it: the BYE was the goodbye
        said = m.untagged_responses.get("BYE") if m is not None else None
        if stage == "connect" and _tls_refusal(exc):
            _finish(ctx, r, "refused", _err(exc))
        elif _bye(exc) or said:
            _finish(ctx, r, "bye", f"{_err(exc)}; BYE {said!r}" if said else _err(exc))
        else:
            _finish(ctx, r, "error", f"{stage}: {_err(exc)}")
    finally:
        if m is not None:
            try:
                m.shutdown()
            except Exception:  # already closed by a BYE: nothing left to release
                pass


def _idle(m: imaplib.IMAP4, hold: float, stop: threading.Event, until: Callable[[], bool] | None) -> None:
    """IDLE for ``hold`` seconds (or until ``stop``/``until``), then DONE and the tagged answer."""
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    line = m.readline()
    if not line.startswith(b"+"):
        raise imaplib.IMAP4.abort(f"IDLE refused: {line!r}")
    end = time.monotonic() + hold
    # Not reading meanwhile: new-mail notices wait in the socket buffer, a few lines at most.
    while time.monotonic() < end and not stop.is_set() and not (until is not None and until()):
        time.sleep(0.5)
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        if not line:
            raise imaplib.IMAP4.abort("EOF after DONE")
        if line.startswith(b"* BYE"):
            raise imaplib.IMAP4.abort(line.decode(errors="replace"))
        if line.startswith(tag):
            if b" OK" not in line:
                raise imaplib.IMAP4.error(line.decode(errors="replace"))
            return


def imap_driver(ctx: Ctx, n: int) -> None:
    """Short IMAP sessions: EXTERNAL login by card, SELECT, FETCH, LOGOUT."""
    src = f"{SOURCES['imap']}.{n}"
    rng = random.Random(ctx.seed * 100 + 10 + n)
    for _ in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        _imap_session(ctx, "imap", src, rng, rng.choice(GOOD_CARDS))
        ctx.stop.wait(rng.uniform(0.2, 0.6))


def idle_driver(ctx: Ctx, n: int) -> None:
    """Long IMAP sessions holding IDLE for ``idle_hold`` seconds each."""
    src = f"{SOURCES['idle']}.{n}"
    rng = random.Random(ctx.seed * 100 + 20 + n)
    for _ in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        _imap_session(ctx, "idle", src, rng, rng.choice(GOOD_CARDS), hold=ctx.idle_hold)
        ctx.stop.wait(rng.uniform(0.5, 1.5))


# ------------------------------------------------------------------------------------------------ SMTP
def _message(mid: str, sender: str, rng: random.Random) -> bytes:
    lines = [f"From: {sender}", f"To: {MAILBOX}", f"Subject: soak {mid}", f"Message-ID: <{mid}>",
             f"Date: {formatdate()}", ""]
    words = "ordonnance patient compte-rendu examen biologie radiologie courrier".split()
    for _ in range(rng.randint(3, 300)):
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return ("\r\n".join(lines) + "\r\n").encode()


def _smtp_submission(ctx: Ctx, driver: str, src: str, rng: random.Random, card: str,
                     abort_in_data: bool = False) -> None:
    implicit = rng.random() < 0.5
    sni = rng.choice([*SMTP_NAMES, None])
    port = ctx.stack.ports.smtps if implicit else ctx.stack.ports.smtp
    mid = f"soak-{ctx.seed}-{uuid.uuid4().hex}@soak.test"
    r = _record(driver, src, kind="smtp", listener="smtps" if implicit else "smtp", card=card, sni=sni,
                msg_id=mid, submitted=False)
    t0 = time.monotonic()
    s: smtplib.SMTP | None = None
    stage = "connect"
    try:
        s = clients.smtp_open(port, src, ctx.stack.pki, card, sni, implicit, r)
        r["hs_ms"] = (time.monotonic() - t0) * 1000
        stage = "auth"
        t1 = time.monotonic()
        s.auth("EXTERNAL", lambda challenge=None: "")
        sender = CARDS[card][1]
        if abort_in_data:
            stage = "data"
            s.mail(sender)
            s.rcpt(MAILBOX)
            s.docmd("DATA")
            assert s.sock is not None
            s.sock.sendall(_message(mid, sender, rng)[:200])
            clients.reset(s.sock)
            s.sock = None
            _finish(ctx, r, "reset_in_data")
            return
        stage = "send"
        r["sending"] = True     # from here a lost reply leaves the message's fate unknown
        s.sendmail(sender, [MAILBOX], _message(mid, sender, rng))
        r["submitted"] = True
        r["accepted_at"] = time.time()    # the report sets this against the Postfix stops (redelivery)
        r["req_ms"] = (time.monotonic() - t1) * 1000
        stage = "quit"
        s.quit()
        _finish(ctx, r, "completed")
    except CLIENT_ERRORS as exc:
        if stage == "connect" and _tls_refusal(exc):
            _finish(ctx, r, "refused", _err(exc))
        elif isinstance(exc, smtplib.SMTPResponseException) and 400 <= exc.smtp_code < 500:
            _finish(ctx, r, "tempfail", f"{stage}: {_err(exc)}")
        elif isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError) and stage != "quit":
            _finish(ctx, r, "disconnected", f"{stage}: {_err(exc)}")
        else:
            _finish(ctx, r, "error", f"{stage}: {_err(exc)}")
    finally:
        if s is not None:
            s.close()


def smtp_driver(ctx: Ctx, n: int) -> None:
    """Submissions with bodies (unique Message-IDs), AUTH EXTERNAL by card, to the soak mailbox."""
    src = f"{SOURCES['smtp']}.{n}"
    rng = random.Random(ctx.seed * 100 + 30 + n)
    for _ in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        _smtp_submission(ctx, "smtp", src, rng, rng.choice(GOOD_CARDS))
        ctx.stop.wait(rng.uniform(0.2, 0.6))


# ------------------------------------------------------------------------------------------------ HTTPS
def https_driver(ctx: Ctx, n: int) -> None:
    """Keep-alive HTTPS connections, several SOAP POSTs each, every answer checked against its request."""
    import http.client

    src = f"{SOURCES['https']}.{n}"
    rng = random.Random(ctx.seed * 100 + 40 + n)
    for _ in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        card = rng.choice(GOOD_CARDS)
        sni = rng.choice([*HTTPS_NAMES, None])
        r = _record("https", src, kind="https", listener="https", card=card, sni=sni, requests=[])
        t0 = time.monotonic()
        conn: http.client.HTTPSConnection | None = None
        try:
            sock = clients.tls_socket(ctx.stack.ports.https, src, ctx.stack.pki, card, sni, r)
            r["hs_ms"] = (time.monotonic() - t0) * 1000
            conn = http.client.HTTPSConnection(sni or HTTPS_NAMES[0], ctx.stack.ports.https, timeout=20)
            conn.sock = sock
            for _ in range(rng.randint(3, 12)):
                rid = uuid.uuid4().hex
                body = (f'<?xml version="1.0"?><soap:Envelope><soap:Body><ping id="{rid}"/>'
                        f"{'x' * rng.randint(0, 4000)}</soap:Body></soap:Envelope>").encode()
                req: dict[str, Any] = {"id": rid, "t0": time.time()}
                r["requests"].append(req)
                t1 = time.monotonic()
                conn.request("POST", "/echo", body=body, headers={"Content-Type": "text/xml", "X-Soak-Id": rid})
                resp = conn.getresponse()
                data = resp.read()
                req["ms"] = (time.monotonic() - t1) * 1000
                req["status"] = resp.status
                req["match"] = data == body if resp.status == 200 else None
                if resp.will_close:
                    break
                if ctx.stop.is_set():
                    break
                time.sleep(rng.uniform(0.0, 0.2))
            conn.close()
            _finish(ctx, r, "completed")
        except (*CLIENT_ERRORS, http.client.HTTPException) as exc:
            pending = [q for q in r["requests"] if "status" not in q]
            outcome = "refused" if not r["requests"] and _tls_refusal(exc) else "error"
            _finish(ctx, r, outcome, f"{len(pending)} unanswered: {_err(exc)}")
        finally:
            if conn is not None:
                conn.close()
        ctx.stop.wait(rng.uniform(0.2, 0.6))


# ------------------------------------------------------------------------------------------------ hostile
def _bad_card(ctx: Ctx, src: str, rng: random.Random) -> None:
    card = rng.choice(list(BAD_CARDS))
    listener = rng.choice(["imaps", "https", "smtps"])
    port = getattr(ctx.stack.ports, listener)
    sni = {"imaps": IMAP_NAMES, "https": HTTPS_NAMES, "smtps": SMTP_NAMES}[listener][rng.randrange(2)]
    r = _record("hostile", src, kind="bad_card", listener=listener, card=card, sni=sni,
                expect=BAD_CARDS[card])
    try:
        with clients.tls_socket(port, src, ctx.stack.pki, card, sni, r) as s:
            if listener == "https":
                s.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
            data = s.recv(100)
        _finish(ctx, r, "served" if data else "closed", repr(data[:40]))
    except CLIENT_ERRORS as exc:
        _finish(ctx, r, "refused", _err(exc))


def _garbage_hello(ctx: Ctx, src: str, rng: random.Random) -> None:
    listener = rng.choice(["imaps", "https"])
    r = _record("hostile", src, kind="garbage_hello", listener=listener)
    junk = bytes([0x16, 0x03, 0x01]) + rng.randbytes(rng.randint(2, 400)) if rng.random() < 0.5 \
        else rng.randbytes(rng.randint(1, 400))
    try:
        with clients.connect(getattr(ctx.stack.ports, listener), src, timeout=15) as s:
            r["sport"] = s.getsockname()[1]
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)    # no more bytes: a short record is complete or never will be
            got = b""
            while chunk := s.recv(4096):
                got += chunk
        _finish(ctx, r, "closed", got[:20].hex())
    except CLIENT_ERRORS as exc:
        _finish(ctx, r, "closed", _err(exc))


def _client_hello_bytes(ctx: Ctx, sni: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = clients.context(ctx.stack.pki, "cps-2ter").wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return obj, inc, out, out.read()


def _reset_at(ctx: Ctx, src: str, rng: random.Random, phase: str) -> None:
    """Open a connection, take it to ``phase``, then reset it."""
    p = ctx.stack.ports
    r = _record("hostile", src, kind="reset", phase=phase)
    m: clients.Imap | None = None
    try:
        if phase == "at_once":
            s = clients.connect(p.imap, src)
            r["sport"] = s.getsockname()[1]
            r["listener"] = "imap"
            clients.reset(s)
        elif phase == "pretls_mid_line":
            s = clients.connect(p.smtp, src)
            r["sport"], r["listener"] = s.getsockname()[1], "smtp"
            s.recv(200)
            s.sendall(b"EHLO half")
            clients.reset(s)
        elif phase == "mid_client_hello":
            s = clients.connect(p.imap, src)
            r["sport"], r["listener"] = s.getsockname()[1], "imap"
            s.recv(200)
            s.sendall(b"a1 STARTTLS\r\n")
            s.recv(200)
            hello = _client_hello_bytes(ctx, IMAP_NAMES[0])[3]
            s.sendall(hello[: len(hello) // 2])
            time.sleep(0.05)
            clients.reset(s)
        elif phase == "mid_handshake":
            s = clients.connect(p.imaps, src)
            r["sport"], r["listener"] = s.getsockname()[1], "imaps"
            _, inc, _, hello = _client_hello_bytes(ctx, IMAP_NAMES[1])
            s.sendall(hello)
            inc.write(s.recv(65536))
            clients.reset(s)
        elif phase == "relay":
            m = clients.imap_open(p.imaps, src, ctx.stack.pki, "cps-2ter", IMAP_NAMES[0], True, r)
            r["listener"] = "imaps"
            clients.external(m)
            m.select("INBOX")
            clients.reset(m.sock)
        elif phase == "mid_http_request":
            s2 = clients.tls_socket(p.https, src, ctx.stack.pki, "fort", HTTPS_NAMES[1], r)
            r["listener"] = "https"
            s2.sendall(f"POST /echo HTTP/1.1\r\nHost: {HTTPS_NAMES[1]}\r\nContent-Length: 1000\r\n\r\n"
                       "<half".encode())
            time.sleep(0.05)
            clients.reset(s2)
        elif phase == "smtp_data":
            _smtp_submission(ctx, "hostile", src, rng, "cps-2ter", abort_in_data=True)
            return
        _finish(ctx, r, "reset")
    except CLIENT_ERRORS as exc:
        said = m is not None and m.untagged_responses.get("BYE")
        _finish(ctx, r, "bye" if _bye(exc) or said else "refused" if _tls_refusal(exc) else "error", _err(exc))


RESET_PHASES = ("at_once", "pretls_mid_line", "mid_client_hello", "mid_handshake", "relay", "mid_http_request",
                "smtp_data")


def hostile_driver(ctx: Ctx, n: int) -> None:
    """A trickle of refused cards, garbage ClientHellos and client resets at every phase."""
    rng = random.Random(ctx.seed * 100 + 50 + n)
    for i in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        src = f"{SOURCES['hostile']}.{1 + i % 20}"
        roll = rng.random()
        if roll < 0.4:
            _bad_card(ctx, src, rng)
        elif roll < 0.55:
            _garbage_hello(ctx, src, rng)
        else:
            _reset_at(ctx, src, rng, RESET_PHASES[i % len(RESET_PHASES)])
        ctx.stop.wait(rng.uniform(0.3, 0.8))


def slow_driver(ctx: Ctx, n: int) -> None:
    """Slow clients: a byte a second before STARTTLS, or a ClientHello that never ends. The proxy cuts them."""
    rng = random.Random(ctx.seed * 100 + 60 + n)
    for i in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        src = f"{SOURCES['slow']}.{n}"
        pretls = i % 2 == 0
        listener = "imap" if pretls else "imaps"
        r = _record("slow", src, kind="slow", listener=listener, phase="pretls" if pretls else "handshake")
        try:
            with clients.connect(getattr(ctx.stack.ports, listener), src, timeout=2) as s:
                r["sport"] = s.getsockname()[1]
                payload = b"a1 CAPABILITY" if pretls else _client_hello_bytes(ctx, IMAP_NAMES[0])[3][:40]
                cut = False
                deadline = time.monotonic() + 30
                for b in payload:
                    if time.monotonic() > deadline:
                        break
                    try:
                        s.sendall(bytes([b]))
                        s.settimeout(1.0)
                        while chunk := s.recv(4096):
                            if pretls and chunk.startswith(b"* OK"):
                                continue
                            break
                        else:
                            cut = True
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        cut = True
                        break
            _finish(ctx, r, "cut" if cut else "not_cut")
        except CLIENT_ERRORS as exc:
            _finish(ctx, r, "error", _err(exc))
        ctx.stop.wait(rng.uniform(0.2, 1.0))


# ------------------------------------------------------------------------------------------------ revocation
def probe_driver(ctx: Ctx, n: int) -> None:
    """Every 2 s a new TLS session with the card the delta CRL revokes mid-run: accepted, then refused."""
    src = f"{SOURCES['probe']}.{n}"
    for _ in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        r = _record("probe", src, kind="probe", listener="imaps", card=REVOKED_MID_RUN, sni=IMAP_NAMES[1])
        t0 = time.monotonic()
        try:
            with clients.tls_socket(ctx.stack.ports.imaps, src, ctx.stack.pki, REVOKED_MID_RUN, IMAP_NAMES[1],
                                    r) as s:
                r["hs_ms"] = (time.monotonic() - t0) * 1000
                data = s.recv(100)
            _finish(ctx, r, "accepted" if data else "closed", repr(data[:40]))
        except CLIENT_ERRORS as exc:
            _finish(ctx, r, "revoked" if "REVOKED" in str(exc).upper() else "refused", _err(exc))
        ctx.stop.wait(2.0)


def stale_driver(ctx: Ctx, n: int) -> None:
    """Every 3 s a session with a card whose issuer's CRL source goes away, then whose CRL expires."""
    src = f"{SOURCES['stale']}.{n}"
    for _ in range(MAX_ITERATIONS):
        if ctx.stop.is_set():
            return
        r = _record("stale", src, kind="stale_probe", listener="imaps", card=STALE_CARD, sni=IMAP_NAMES[0])
        try:
            with clients.tls_socket(ctx.stack.ports.imaps, src, ctx.stack.pki, STALE_CARD, IMAP_NAMES[0], r) as s:
                data = s.recv(100)
            _finish(ctx, r, "accepted" if data else "closed", repr(data[:40]))
        except CLIENT_ERRORS as exc:
            _finish(ctx, r, "refused", _err(exc))
        ctx.stop.wait(3.0)


def held_driver(ctx: Ctx, n: int) -> None:
    """One session of the card revoked mid-run, opened at the start and held in IDLE until the end."""
    rng = random.Random(ctx.seed * 100 + 70 + n)
    _imap_session(ctx, "held", f"{SOURCES['held']}.{n}", rng, REVOKED_MID_RUN, hold=10 ** 6)


def readback(stack: Stack, rec: Recorder, seed: int) -> dict[str, int]:
    """Every Message-ID in the soak mailbox and how many times it is there, read over IMAP through the proxy."""
    src = f"{SOURCES['readback']}.1"
    r = _record("readback", src, kind="imap", listener="imaps", card="cps-2ter", sni=IMAP_NAMES[0])
    found: dict[str, int] = {}
    m = clients.imap_open(stack.ports.imaps, src, stack.pki, "cps-2ter", IMAP_NAMES[0], True, r)
    try:
        clients.external(m)
        _typ, data = m.select("INBOX", readonly=True)
        count = int(data[0] or 0)
        if count:
            _typ, items = m.fetch(f"1:{count}", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            for item in items:
                if isinstance(item, tuple):
                    for line in item[1].decode(errors="replace").splitlines():
                        if line.lower().startswith("message-id:"):
                            mid = line.split(":", 1)[1].strip().strip("<>")
                            found[mid] = found.get(mid, 0) + 1
        m.logout()
        r.update(t1=time.time(), outcome="completed", messages=count)
    except CLIENT_ERRORS as exc:
        r.update(t1=time.time(), outcome="error", detail=_err(exc))
        raise
    finally:
        rec.add(r)
    return found


#: (driver function, threads)
DRIVERS: tuple[tuple[Callable[[Ctx, int], None], int], ...] = (
    (imap_driver, 2), (idle_driver, 2), (smtp_driver, 2), (https_driver, 2), (hostile_driver, 1),
    (slow_driver, 1), (probe_driver, 1), (held_driver, 1), (stale_driver, 1),
)


def start(ctx: Ctx) -> list[threading.Thread]:
    """Start every driver thread."""
    threads = []
    for fn, count in DRIVERS:
        for n in range(1, count + 1):
            t = threading.Thread(target=_guard, args=(ctx, fn, n), name=f"{fn.__name__}-{n}", daemon=True)
            t.start()
            threads.append(t)
    return threads


def _guard(ctx: Ctx, fn: Callable[[Ctx, int], None], n: int) -> None:
    """A driver's own bug is recorded (and fails the run), never silently kills the thread."""
    try:
        fn(ctx, n)
    except Exception as exc:
        ctx.rec.add({"driver": fn.__name__, "kind": "driver_crash", "t0": time.time(), "t1": time.time(),
                     "outcome": "driver_crash", "detail": _err(exc)})
