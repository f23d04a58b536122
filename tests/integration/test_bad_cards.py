"""The bad-card corpus: every card refusal reason, each proven by a real handshake through a running proxy.

``CORPUS`` is the table: reason -> the card (from ``sniproxy.demo.pki``) and the proxy set-up that make the
proxy refuse with that reason. Each row is played over implicit TLS (``imaps``) and over SMTP STARTTLS with
a real client (the stdlib ``ssl`` module, i.e. OpenSSL), and the test reads the proxy's own ``connection``
event: the refusal must be the intended one (stable ``reason``, at the handshake), not just "some error",
and the backend must never have seen the client.

``test_corpus_covers_every_card_reason`` fails when a card reason is added to ``sniproxy.errors.Reason``
without a row here. Rows of ``test_proxy_mail.py`` and ``test_crl.py`` test more around some of these
reasons (SNI per flow, CRL refresh, delta CRLs); this file is the one place listing them all.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.crls import load_cert, load_key, make_crl, revoke, write_crl_file
from sniproxy.demo.pki import TestPki
from sniproxy.errors import Reason
from tests.conftest import free_ports
from tests.integration.clients import server_roots
from tests.integration.peers import Dovecot, Postfix
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration

SNI = {"imaps": "frontimap-igcsante.mssante.fr", "smtp": "frontsmtp-igcsante.mssante.fr"}
CLIENT_ERRORS = (ssl.SSLError, OSError, smtplib.SMTPException, EOFError)


@dataclass(frozen=True)
class Case:
    """One row of the corpus: ``card`` (None: no certificate at all) refused with ``reason`` by ``setup``."""

    reason: str
    card: str | None
    setup: str            # production | test-profile | crl: see the proxy fixtures below
    why: str
    detail: str = ""      # a substring the logged detail must contain (where to look: depth, OpenSSL words)


CORPUS: tuple[Case, ...] = (
    Case("unknown_ca", "unknown-ca", "production", "issued by a CA of no configured authority set",
         "unable to get local issuer"),
    Case("expired", "expired", "production", "notAfter yesterday", "certificate has expired"),
    Case("not_yet_valid", "not-yet-valid", "production", "notBefore tomorrow", "not yet valid"),
    Case("wrong_usage", "wrong-ku", "production", "a signature card: keyUsage nonRepudiation, EKU emailProtection"),
    Case("wrong_usage", "wrong-eku", "production", "extendedKeyUsage serverAuth only"),
    Case("test_chain", "test-fort", "production", "IGC Santé TEST chain presented to a production profile"),
    Case("production_chain", "fort", "test-profile", "production chain presented to a test profile"),
    Case("test_card", "test-category", "production", "production chain, product category 0x80 (test card)",
         "test card"),
    Case("card_type", "cpf", "production", "a CPF card on flows accepting CPS and CPE only", "card type"),
    Case("no_client_cert", None, "production", "no certificate where client_auth is required"),
    Case("self_signed", "self-signed", "production", "a self-signed card", "depth 0"),
    Case("chain_too_deep", "deep", "production", "5 sub-CAs under the Fort root: one more than verify_depth 4",
         "chain too long"),
    Case("bad_certificate", "bad-signature", "production", "the Fort intermediate's name, another key's signature",
         "signature failure"),
    Case("weak_signature", "sha1", "production", "card signed with SHA-1", "depth 0"),
    Case("weak_key", "rsa1024", "production", "1024-bit RSA card key", "depth 0"),
    Case("revoked", "revoked", "crl", "the card is in its issuer's CRL (keyCompromise)", "depth 0"),
    Case("revoked", "cps-2ter", "crl", "the card's intermediate is in its root's CRL (cACompromise)", "depth 1"),
    Case("crl_stale", "standard-cpe", "crl", "its issuer's CRL is past nextUpdate (fail closed)", "stale"),
    Case("crl_missing", "test-fort", "test-profile", "its issuer's CRL source is unreachable, nothing cached"),
)

# Cards each set-up must accept: proves a refusal comes from the card, not from a broken set-up.
CONTROLS = {"production": ("fort", "cps-2ter"), "crl": ("fort", "fort-liberal")}


def card_reasons() -> list[Reason]:
    """The card verification reasons: the block of ``Reason`` from UNKNOWN_CA to CRL_MISSING, plus weak crypto."""
    members = list(Reason)
    block = members[members.index(Reason.UNKNOWN_CA): members.index(Reason.CRL_MISSING) + 1]
    return sorted(set(block) | {Reason.WEAK_SIGNATURE, Reason.WEAK_KEY})


def test_corpus_covers_every_card_reason() -> None:
    covered = {c.reason for c in CORPUS}
    assert covered == {r.value for r in card_reasons()}, "a card reason has no row in CORPUS (or a row no reason)"
    # The list, by name: each must be a row.
    wanted = {("unknown_ca", "unknown-ca"), ("expired", "expired"), ("not_yet_valid", "not-yet-valid"),
              ("wrong_usage", "wrong-ku"), ("wrong_usage", "wrong-eku"), ("test_chain", "test-fort"),
              ("revoked", "revoked"), ("revoked", "cps-2ter"), ("crl_stale", "standard-cpe"),
              ("no_client_cert", None), ("chain_too_deep", "deep"), ("weak_signature", "sha1"),
              ("weak_key", "rsa1024")}
    assert wanted <= {(c.reason, c.card) for c in CORPUS}


# ---------------------------------------------------------------------------- proxies, one per set-up
def _client_context(pki: TestPki, card: str | None) -> ssl.SSLContext:
    """A client presenting ``card``; security level 0 so that OpenSSL lets it load and send weak cards
    (the proxy, not the client, is under test)."""
    ctx = ssl.create_default_context(cafile=str(server_roots(pki)))
    ctx.check_hostname = False
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if card is not None:
        kp = pki.cards[card]
        ctx.load_cert_chain(str(kp.chain), str(kp.key))
    return ctx


@dataclass
class Setup:
    proxy: ProxyProcess
    ports: dict[str, int]


def _start(cfg: dict[str, Any], path: Path, ports: dict[str, int]) -> Setup:
    proxy = ProxyProcess(write_config(cfg, path), wait_ports=[("127.0.0.1", p) for p in ports.values()])
    return Setup(proxy, ports)


def _base_config(pki: TestPki, dovecot: Dovecot, postfix: Postfix, **kw: Any) -> tuple[dict[str, Any], dict[str, int]]:
    imaps, smtp = free_ports(2)
    cfg = config_dict(pki, DemoPorts(imaps=imaps, smtp=smtp, imap_backend=f"127.0.0.1:{dovecot.imap_port}",
                                     smtp_backend=f"127.0.0.1:{postfix.smtp_port}"), **kw)
    return cfg, {"imaps": imaps, "smtp": smtp}


@pytest.fixture(scope="module")
def setups(pki: TestPki, dovecot: Dovecot, postfix: Postfix,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Setup]]:
    """The three proxies of the corpus, started once for the module (a start costs about a second)."""
    tmp = tmp_path_factory.mktemp("bad-cards")
    started: dict[str, Setup] = {}
    try:
        # production: the bi-flux config; flows take CPS and CPE cards only (so a CPF card is card_type).
        cfg, ports = _base_config(pki, dovecot, postfix)
        for flow in cfg["flows"].values():
            flow["card_types"] = ["CPS", "CPE"]
        started["production"] = _start(cfg, tmp / "production.yaml", ports)

        # test-profile: trusts the TEST chains only; the TEST Fort set's CRL source answers nothing.
        cfg, ports = _base_config(pki, dovecot, postfix, profile="test")
        (dead,) = free_ports(1)
        cfg["state_dir"] = str(tmp / "state-test")
        cfg["crl"] = {"timeout": 2}
        cfg["authorities"]["igc-sante-fort-pp-test"]["crl"] = [f"http://127.0.0.1:{dead}/fort-test.crl"]
        started["test-profile"] = _start(cfg, tmp / "test-profile.yaml", ports)

        # crl: CRL files, as the CAs would publish them.
        cfg, ports = _base_config(pki, dovecot, postfix, standard_enabled=True)
        cfg["state_dir"] = str(tmp / "state-crl")
        crls = _write_crls(pki, tmp / "crls")
        for name, files in crls.items():
            cfg["authorities"][name]["crl"] = [str(p) for p in files]
        started["crl"] = _start(cfg, tmp / "crl.yaml", ports)
        yield started
    finally:
        for s in started.values():
            s.proxy.stop()


def _write_crls(pki: TestPki, dest: Path) -> dict[str, list[Path]]:
    """Fort: its intermediate revokes card ``revoked``. 2TER: its root revokes the 2TER intermediate.
    Standard: its intermediate's CRL expired yesterday (stale). Every other CRL is fresh and empty."""
    now = datetime.now(UTC).replace(microsecond=0)
    out: dict[str, list[Path]] = {}
    for name in ("igc-sante-fort-pp", "igc-cps-2ter", "igc-sante-standard-pp"):
        files = pki.authorities[name]
        inter, root = load_cert(files.intermediates[0]), load_cert(files.roots[0])
        inter_key, root_key = load_key(files.intermediate_keys[0]), load_key(files.root_keys[0])
        inter_kw: dict[str, Any] = {}
        root_revoked: list[tuple[int, datetime, x509.ReasonFlags | None]] = []
        if name == "igc-sante-fort-pp":
            inter_kw["revoked"] = [revoke(pki.cards["revoked"].cert)]
        elif name == "igc-cps-2ter":
            root_revoked = [(inter.serial_number, now - timedelta(hours=2), x509.ReasonFlags.ca_compromise)]
        else:
            inter_kw.update(this_update=now - timedelta(days=8), next_update=now - timedelta(days=1))
        paths = []
        for kind, der in (("intermediate", make_crl(inter, inter_key, **inter_kw)),
                          ("root", make_crl(root, root_key, revoked=root_revoked))):
            paths.append(write_crl_file(dest, f"{name}-{kind}.crl", der))
        out[name] = paths
    return out


# ---------------------------------------------------------------------------- one attempt
def _attempt(setup: Setup, pki: TestPki, listener: str, card: str | None) -> tuple[bool, dict[str, Any]]:
    """Connect with ``card`` over ``listener``; (served, the proxy's connection event).

    Served means the client got an application answer through the proxy after the handshake (IMAP
    greeting, SMTP EHLO reply). With TLS 1.3 the client's handshake ends before the server checked the
    card, so a refusal shows up at the first read: that is where the error is expected.
    """
    setup.proxy.clear()
    served = False
    port = setup.ports[listener]
    ctx = _client_context(pki, card)
    with contextlib.suppress(*CLIENT_ERRORS):
        if listener == "imaps":
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with ctx.wrap_socket(raw, server_hostname=SNI[listener]) as tls:
                served = tls.recv(64).startswith(b"* OK")
        else:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo("client.test")
                s._host = SNI[listener]  # type: ignore[attr-defined]  # smtplib sends self._host as the SNI
                s.starttls(context=ctx)
                code, _ = s.ehlo("client.test")
                served = code == 250
    ev = setup.proxy.wait_event(lambda e: e["listener"] == listener)
    return served, ev


def _backend_contacts(dovecot: Dovecot, postfix: Postfix) -> tuple[int, int]:
    """How many client connections the backends have seen so far (their own logs)."""
    return dovecot.read_log().count("imap-login:"), postfix.read_log().count("connect from")


# ---------------------------------------------------------------------------- the corpus
@pytest.mark.parametrize("listener", ["imaps", "smtp"])
@pytest.mark.parametrize("case", CORPUS, ids=[f"{c.reason}-{c.card}" for c in CORPUS])
def test_bad_card_refused_with_its_reason(case: Case, listener: str, setups: dict[str, Setup], pki: TestPki,
                                          dovecot: Dovecot, postfix: Postfix) -> None:
    setup = setups[case.setup]
    before = _backend_contacts(dovecot, postfix)
    served, ev = _attempt(setup, pki, listener, case.card)
    assert not served, ev
    assert (ev["reason"], ev["outcome"], ev["phase"]) == (case.reason, "refused", "handshake"), (case.why, ev)
    assert case.detail.lower() in ev.get("detail", "").lower(), ev
    if case.reason == "revoked":
        expected = "cACompromise" if case.detail == "depth 1" else "keyCompromise"
        assert ev["revocation"]["reason"] == expected, ev
    time.sleep(0.1)  # a backend connection, if one were (wrongly) opened, would be logged by now
    assert _backend_contacts(dovecot, postfix) == before, "the backend saw a refused client"
    assert "Traceback" not in setup.proxy.log_text()


@pytest.mark.parametrize("listener", ["imaps", "smtp"])
@pytest.mark.parametrize(("setup_name", "card"), [(s, c) for s, cards in CONTROLS.items() for c in cards])
def test_good_cards_pass_the_same_setups(setup_name: str, card: str, listener: str, setups: dict[str, Setup],
                                         pki: TestPki) -> None:
    served, ev = _attempt(setups[setup_name], pki, listener, card)
    assert served, ev
    assert ev["reason"] in ("ok", "client_closed") and ev["outcome"] != "refused", ev


@pytest.mark.parametrize(("card", "reason", "detail"), [
    ("sha1", "weak_signature", "SHA1 signature at depth 0"),
    ("rsa1024", "weak_key", "1024-bit RSA key at depth 0"),
])
def test_weak_cards_refused_even_when_openssl_would_accept_them(card: str, reason: str, detail: str, pki: TestPki,
                                                               dovecot: Dovecot, postfix: Postfix,
                                                               tmp_path: Path) -> None:
    """At OpenSSL security level 0 the library checks neither key sizes nor digests: sniproxy's own rule
    (``verify.weak_crypto``) must still refuse, with its own words in the detail (not OpenSSL's)."""
    cfg, ports = _base_config(pki, dovecot, postfix)
    for flow in cfg["flows"].values():
        flow["tls"] = {"ciphers": "ECDHE+AESGCM:ECDHE+CHACHA20:@SECLEVEL=0"}
    setup = _start(cfg, tmp_path / "seclevel0.yaml", ports)
    try:
        served, ev = _attempt(setup, pki, "imaps", card)
        assert not served and (ev["reason"], ev["phase"]) == (reason, "handshake"), ev
        assert ev["detail"] == detail, ev
        served, ev = _attempt(setup, pki, "imaps", "fort")   # the same proxy serves a good card
        assert served and ev["reason"] == "ok", ev
    finally:
        setup.proxy.stop()
