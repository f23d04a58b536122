"""Everything the soak runs against, started on loopback from the integration fixtures' own code.

Dovecot and Postfix (``tests.integration.peers``, restartable in place), the SOAP echo backend with a
fault switch (``soak.httpbackend``), a CRL HTTP server and slapd (``tests.integration.crlpeers``),
CRLs signed with the test PKI's keys (``sniproxy.demo.crls``), and ``sniproxy run`` with ``workers: 2``
writing its JSON events to a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.crls import load_cert, load_key, make_crl, revoke
from sniproxy.demo.pki import TestPki, build
from tests.conftest import free_ports
from tests.integration.crlpeers import CrlHttpServer, Slapd, start_http_server, start_slapd
from tests.integration.httppeers import ROOT, HttpBackend
from tests.integration.peers import Dovecot, Postfix, start_dovecot, start_postfix

FORT, CPS, STANDARD = "igc-sante-fort-pp", "igc-cps-2ter", "igc-sante-standard-pp"
STALE_CARD = "standard-cpe"              # its issuer's CRL source goes away mid-run, then the CRL expires
#: Card -> its CN (IdNat_PS) and the one mailbox the proxy-side EXTERNAL login maps it to.
CARDS = {"cps-2ter": ("810001234567", "alice@example.test"), "fort": ("810009876543", "bob@example.test"),
         "fort-liberal": ("810005556667", "alice@example.test")}
MAILBOX = "alice@example.test"           # every soak message goes there (read back at the end)
REVOKED_MID_RUN = "fort-liberal"         # listed by the delta CRL published mid-run
BASE_NUMBER = 1000                       # the good Fort base CRL; bad ones are 999 (rollback), 1001 (forged)
IMAP_NAMES = ("frontimap.mssante.fr", "frontimap-igcsante.mssante.fr")
SMTP_NAMES = ("frontsmtp.mssante.fr", "frontsmtp-igcsante.mssante.fr")
HTTPS_NAMES = ("mss-msg.mssante.fr", "mss-msg-igcsante.mssante.fr")
#: Listener timeouts: short enough that a slow client is cut within seconds.
PRETLS_TIMEOUT, HANDSHAKE_TIMEOUT = 5.0, 5.0
HTTP_SLOW_DELAY = 1.5                    # the backend's "slow" mode, under the proxy's response_timeout
RESPONSE_TIMEOUT = 6.0


class StackError(RuntimeError):
    """A peer or the proxy did not start."""


@dataclass
class CrlSet:
    """The CRLs the soak publishes: the good ones, the bad ones, and the delta that revokes a card."""

    fort_inter: bytes
    fort_root: bytes
    delta_empty: bytes
    delta_revoking: bytes
    rollback: bytes
    forged: bytes
    cps_inter: bytes
    cps_root: bytes
    standard_inter: bytes
    stale_at: float                      # the Standard intermediate CRL's nextUpdate (epoch seconds)


def make_crls(pki: TestPki, stale_at: float) -> CrlSet:
    """Sign every CRL of the run with the test PKI's CA keys (the forged one with a stranger's key).

    The Standard intermediate's CRL has its nextUpdate at ``stale_at``: the run outlives it."""
    def ca(name: str, kind: str) -> tuple[Any, Any]:
        files = pki.authorities[name]
        cert = files.intermediates[0] if kind == "inter" else files.roots[0]
        key = files.intermediate_keys[0] if kind == "inter" else files.root_keys[0]
        return load_cert(cert), load_key(key)

    fi, fik = ca(FORT, "inter")
    fr, frk = ca(FORT, "root")
    ci, cik = ca(CPS, "inter")
    cr, crk = ca(CPS, "root")
    si, sik = ca(STANDARD, "inter")
    next_update = datetime.fromtimestamp(int(stale_at), UTC)
    revoked = [revoke(pki.cards["revoked"].cert)]
    stranger = rsa.generate_private_key(65537, 2048)
    return CrlSet(
        fort_inter=make_crl(fi, fik, revoked=revoked, number=BASE_NUMBER),
        fort_root=make_crl(fr, frk, number=BASE_NUMBER),
        delta_empty=make_crl(fi, fik, number=BASE_NUMBER + 1, delta_of=BASE_NUMBER),
        delta_revoking=make_crl(fi, fik, revoked=[revoke(pki.cards[REVOKED_MID_RUN].cert)],
                                number=BASE_NUMBER + 2, delta_of=BASE_NUMBER),
        # Neither bad CRL lists the "revoked" card: had one replaced the good base, that card would pass.
        rollback=make_crl(fi, fik, number=BASE_NUMBER - 1),
        forged=make_crl(fi, stranger, number=BASE_NUMBER + 5),
        cps_inter=make_crl(ci, cik, number=BASE_NUMBER),
        cps_root=make_crl(cr, crk, number=BASE_NUMBER),
        standard_inter=make_crl(si, sik, number=BASE_NUMBER, this_update=next_update - timedelta(hours=1),
                                next_update=next_update),
        stale_at=float(int(stale_at)),
    )


class Proxy:
    """``sniproxy run`` as a child process, its stdout and stderr (JSON events) going to ``log``."""

    def __init__(self, config: Path, log: Path, workers: int, timeout: float = 30.0) -> None:
        self.config, self.log = config, log
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "sniproxy", "run", "-c", str(config)],
                                         stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while len([e for e in self.events() if e.get("event") == "ready"]) < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StackError(f"sniproxy did not become ready (exit {self.proc.poll()}):\n"
                                 + log.read_text(errors="replace")[-4000:])
            time.sleep(0.1)

    def events(self) -> list[dict[str, Any]]:
        """Every JSON event written so far."""
        return read_events(self.log)

    def workers(self) -> list[int]:
        """The worker pids: children of the supervisor that logged ``ready`` (not any other helper child)."""
        pid = self.proc.pid
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
        ready = {e.get("pid") for e in self.events() if e.get("event") == "ready"}
        return [c for c in children if c in ready] or children

    def supervisor_forwards_usr1(self) -> bool:
        """True when the supervisor catches SIGUSR1 (and passes it on); else it must go to the workers only."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))
        except OSError:
            pass
        return False

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM (the workers drain), bounded wait, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a log file, one a line (other lines, e.g. a traceback, are skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict):
                    out.append(ev)
    return out


@dataclass
class Ports:
    """Where the proxy listens."""

    imap: int
    smtp: int
    imaps: int
    smtps: int
    https: int


@dataclass
class Stack:
    """The running peers and proxy of one soak run."""

    work: Path
    pki: TestPki
    crls: CrlSet
    dovecot: Dovecot
    postfix: Postfix
    http: HttpBackend
    http_mode: Path
    crl: CrlHttpServer
    slapd: Slapd
    ports: Ports
    config: dict[str, Any]
    config_path: Path
    proxy: Proxy | None = None
    urls: dict[str, str] = field(default_factory=dict)

    def set_http_mode(self, mode: str) -> None:
        """``ok``, ``slow`` or ``500`` (see ``soak.httpbackend``)."""
        text = f"slow {HTTP_SLOW_DELAY}" if mode == "slow" else mode
        tmp = self.http_mode.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(self.http_mode)

    def publish_fort_inter(self, mode: str = "ok") -> None:
        """What the Fort intermediate's HTTP source answers: the good base, or one fault."""
        c = self.crls
        if mode == "ok":
            self.crl.publish("fort-inter.crl", c.fort_inter)
        elif mode == "bad_signature":
            self.crl.publish("fort-inter.crl", c.forged)
        elif mode == "rollback":
            self.crl.publish("fort-inter.crl", c.rollback)
        elif mode == "truncated":
            self.crl.publish("fort-inter.crl", c.fort_inter, mode="truncate")
        elif mode == "slow":
            self.crl.publish("fort-inter.crl", c.fort_inter, mode="trickle")
        elif mode == "zeros_200mb":
            self.crl.publish("fort-inter.crl", b"", mode="zeros", size=200 * 1000 * 1000)
        else:
            raise ValueError(mode)

    def stop(self) -> None:
        """Stop everything, each step bounded and independent of the others."""
        steps: list[Callable[[], object]] = [lambda: self.proxy.stop() if self.proxy else None, self.http.stop,
                                             self.crl.stop, self.slapd.stop, self.postfix.stop, self.dovecot.stop]
        for step in steps:
            with contextlib.suppress(Exception):
                step()


def start(work: Path, stale_at: float, workers: int = 2) -> Stack:
    """Build the PKI and CRLs, start every peer, write the config and start the proxy."""
    work.mkdir(parents=True, exist_ok=True)
    pki = build(work / "pki")
    crls = make_crls(pki, stale_at)
    started: list[Any] = []
    try:
        dovecot = start_dovecot()
        started.append(dovecot)
        # Deferred mail is retried within seconds (not Postfix's 5 min): a Dovecot restart must not
        # leave accepted messages queued past the end of a short run.
        postfix = start_postfix(dovecot.lmtp_port, extra_main_cf="queue_run_delay = 3s\n"
                                "minimal_backoff_time = 3s\nmaximal_backoff_time = 6s\n")
        started.append(postfix)
        http_mode = work / "http-mode"
        http_mode.write_text("ok\n")
        http = HttpBackend(work / "http-requests.jsonl", module="soak.httpbackend",
                           args=("--mode-file", str(http_mode)))
        started.append(http)
        crl = start_http_server()
        started.append(crl)
        slapd = start_slapd(work / "slapd")
        started.append(slapd)
    except BaseException:
        for peer in reversed(started):
            with contextlib.suppress(Exception):
                peer.stop()
        raise
    imap, smtp, imaps, smtps, https = free_ports(5)
    ports = Ports(imap, smtp, imaps, smtps, https)
    urls = {
        "fort_inter": crl.url("fort-inter.crl"),
        "fort_root": crl.url("fort-root.crl"),
        "standard_inter": crl.url("standard-inter.crl"),
        "fort_delta": slapd.url("Fort Delta", "deltaRevocationList;binary"),
        "cps_inter": slapd.url("CPS Inter"),
        "cps_root": slapd.url("CPS Root"),
    }
    stack = Stack(work, pki, crls, dovecot, postfix, http, http_mode, crl, slapd, ports, {}, work / "sniproxy.yaml",
                  urls=urls)
    try:
        stack.publish_fort_inter("ok")
        crl.publish("fort-root.crl", crls.fort_root)
        crl.publish("standard-inter.crl", crls.standard_inter)
        slapd.put("Fort Delta", delta=crls.delta_empty)
        slapd.put("CPS Inter", base=crls.cps_inter)
        slapd.put("CPS Root", base=crls.cps_root)
        stack.config = proxy_config(stack, workers)
        write_config(stack.config, stack.config_path)
        stack.proxy = Proxy(stack.config_path, work / "proxy.log", workers)
    except BaseException:
        stack.stop()
        raise
    return stack


def proxy_config(s: Stack, workers: int) -> dict[str, Any]:
    """The soak's sniproxy config: every listener kind, proxy-side card logins, CRLs over HTTP and LDAP."""
    mapping = s.work / "mailboxes.yaml"
    mapping.write_text(yaml.safe_dump({cn: [box] for cn, box in CARDS.values()}))
    secret = s.work / "master.pw"
    secret.write_text(s.dovecot.master_users["proxy-master"] + "\n")
    secret.chmod(0o600)
    p = s.ports
    cfg = config_dict(s.pki, DemoPorts(imap=p.imap, smtp=p.smtp, imaps=p.imaps, smtps=p.smtps),
                      standard_enabled=True)
    imap_backend = {"address": f"127.0.0.1:{s.dovecot.imap_port}", "identity": "none",
                    "login": {"mapping": str(mapping), "master_user": "proxy-master",
                              "master_password_file": str(secret)}}
    smtp_backend = {"address": f"127.0.0.1:{s.postfix.smtp_port}", "identity": "xclient",
                    "login": {"mapping": str(mapping)}}
    for ls in cfg["listeners"]:
        ls["backend"] = imap_backend if ls["protocol"].startswith("imap") else smtp_backend
        ls["timeouts"] = {"pretls": f"{PRETLS_TIMEOUT:g}s", "handshake": f"{HANDSHAKE_TIMEOUT:g}s"}
    cfg["listeners"].append({
        "name": "https", "bind": f"127.0.0.1:{p.https}", "protocol": "https",
        "backend": f"127.0.0.1:{s.http.port}", "sni": {HTTPS_NAMES[0]: "2bis", HTTPS_NAMES[1]: "igcsante"},
        "default_flow": "2bis", "timeouts": {"handshake": f"{HANDSHAKE_TIMEOUT:g}s"},
        "http": {"headers": ["card"], "response_timeout": RESPONSE_TIMEOUT,
                 "pool": {"idle_timeout": 3}},
    })
    u = s.urls
    cfg["authorities"][FORT]["crl"] = [u["fort_inter"], u["fort_root"], u["fort_delta"]]
    cfg["authorities"][CPS]["crl"] = [u["cps_inter"], u["cps_root"]]
    # fail closed (no grace): once its CRL is past nextUpdate, the Standard set's cards are refused
    cfg["authorities"][STANDARD]["crl"] = {"sources": [u["standard_inter"]], "check": "leaf"}
    cfg["workers"] = workers
    cfg["state_dir"] = str(s.work / "state")
    # Sources are fetched every few seconds so that each fault window sees fetches from both workers.
    cfg["crl"] = {"refresh_max": "4s", "retry_min": "2s", "timeout": "3s"}
    return cfg
