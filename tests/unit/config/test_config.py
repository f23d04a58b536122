"""sniproxy.config.load: schema, cross-references and file checks, each located by file, line and key."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sniproxy.config.load import Loaded, load
from sniproxy.config.model import (
    Address,
    Backend,
    CardType,
    ClientAuth,
    Limits,
    Profile,
    Protocol,
    Route,
    Timeouts,
    TlsPolicy,
    UnknownSni,
)
from sniproxy.config.names import parse_address
from sniproxy.config.tlspolicy import policy_problems, policy_weaknesses
from sniproxy.errors import ConfigError, ConfigErrors

REPO = Path(__file__).resolve().parents[3]
NOW = dt.datetime.now(dt.UTC)


# -- throwaway PKI ---------------------------------------------------------------------------------
@dataclass
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def make_cert(cn: str, issuer: Cert | None = None, *, ca: bool = False, days: float = 365,
              ou: str | None = None) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    name = x509.Name(attrs)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=400))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Cert(cert, key)


@dataclass
class Pki:
    card_root: Cert
    card_inter: Cert
    test_root: Cert
    srv_inter: Cert
    leaf_2bis: Cert
    leaf_igcsante: Cert
    other_ca: Cert


@pytest.fixture(scope="module")
def pki() -> Pki:
    card_root = make_cert("AC RACINE CARTES", ca=True)
    srv_root = make_cert("AC RACINE SERVEURS", ca=True)
    srv_inter = make_cert("AC SERVEURS", srv_root, ca=True)
    return Pki(
        card_root=card_root,
        card_inter=make_cert("AC CARTES", card_root, ca=True),
        test_root=make_cert("TEST AC RACINE CARTES", ca=True),
        srv_inter=srv_inter,
        leaf_2bis=make_cert("frontimap.mssante.fr", srv_inter),
        leaf_igcsante=make_cert("frontimap-igcsante.mssante.fr", srv_inter),
        other_ca=make_cert("AC AUTRE", ca=True),
    )


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


BASE = """\
profile: production
workers: 2
log: {level: debug, format: json}
state_dir: state
authorities:
  prod-cards:
    roots: [pki/card-root.pem]
    intermediates: [pki/card-inter.pem]
    crl: ["http://crl.example/ac.crl", crl/local.crl]
  test-cards:
    roots: [pki/test-root.pem]
  off-cards:
    roots: [pki/missing.pem]
    enabled: false
flows:
  2bis:
    certificate: pki/server-2bis/chain.pem
    key: pki/server-2bis/key.pem
    client_auth: required
    authorities: [prod-cards, off-cards]
    card_types: [CPS, cpf]
    refuse_test_cards: true
    verify_depth: 3
    tls: {min_version: "1.3", session_tickets: false}
  igcsante:
    certificate: pki/server-igcsante/chain.pem
    key: pki/server-igcsante/key.pem
    authorities: [prod-cards]
listeners:
  - name: imap
    bind: ["127.0.0.1:10143", "[::1]:10143"]
    protocol: imap
    hostname: FrontIMAP.mssante.fr
    backend: "127.0.0.1:143"
    sni:
      frontimap.mssante.fr: 2bis
      FRONTIMAP-igcsante.mssante.fr: igcsante
      "*.imap.mssante.fr": 2bis
    default_flow: 2bis
    timeouts: {pretls: 30, idle: 600.5}
    max_line: 4096
  - name: smtp
    bind: 127.0.0.1:10587
    protocol: smtp
    backend: {address: "localhost:587", identity: none}
    flow: igcsante
"""


@dataclass
class Work:
    """A config folder with the throwaway PKI written under ``pki/``."""

    root: Path
    pki: Pki
    text: str = ""

    def write(self, text: str, subs: dict[str, str] | None = None) -> Path:
        """Write the config as ``sniproxy.yaml``, after replacing each ``old`` of ``subs`` once."""
        for old, new in (subs or {}).items():
            assert old in text, old
            text = text.replace(old, new, 1)
        self.text = text
        path = self.root / "sniproxy.yaml"
        path.write_text(text)
        return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth occurrence of ``needle``."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            seen += 1
            if seen == nth:
                return number
    raise AssertionError(f"{needle!r} not in config")


@pytest.fixture
def work(tmp_path: Path, pki: Pki) -> Work:
    d = tmp_path / "pki"
    write(d / "card-root.pem", pki.card_root.pem())
    write(d / "card-inter.pem", pki.card_inter.pem())
    write(d / "test-root.pem", pki.test_root.pem())
    write(d / "other-ca.pem", pki.other_ca.pem())
    write(d / "leaf.pem", pki.leaf_2bis.pem())
    for name, leaf in (("server-2bis", pki.leaf_2bis), ("server-igcsante", pki.leaf_igcsante)):
        write(d / name / "chain.pem", leaf.pem() + pki.srv_inter.pem())
        write(d / name / "key.pem", leaf.key_pem())
    return Work(tmp_path, pki)


def load_errors(path: Path, **kw: bool) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load(path, **kw)
    return info.value.errors


def find(errors: list[ConfigError], key: str) -> ConfigError:
    hits = [e for e in errors if e.key == key]
    assert hits, f"no error at {key}; got:\n" + "\n".join(map(str, errors))
    return hits[0]


def assert_error(path: Path, key: str, line: int, fragment: str, errors: list[ConfigError] | None = None
                 ) -> ConfigError:
    errs = errors if errors is not None else load_errors(path)
    err = find(errs, key)
    assert err.file == str(path)
    assert err.line == line, str(err)
    assert fragment in err.message, str(err)
    text = str(err)
    assert text.startswith(f"{path}:{line}: {key}: "), text
    return err


def assert_warning(loaded: Loaded, path: Path, key: str, line: int, fragment: str) -> None:
    prefix = f"{path}:{line}: {key}: "
    hits = [w for w in loaded.warnings if w.startswith(prefix) and fragment in w]
    assert hits, f"no warning {prefix}...{fragment}; got {loaded.warnings}"


# -- round trip --------------------------------------------------------------------------------------
def test_valid_config_maps_into_the_model(work: Work) -> None:
    path = work.write(BASE)
    loaded = load(path)
    assert loaded.warnings == ()
    cfg = loaded.config
    root = work.root
    assert cfg.source == path.resolve()
    assert cfg.profile is Profile.PRODUCTION
    assert cfg.workers == 2
    assert (cfg.log_level, cfg.log_format) == ("debug", "json")
    assert cfg.state_dir == root / "state"

    prod = cfg.authorities["prod-cards"]
    assert prod.roots == (root / "pki/card-root.pem",)
    assert prod.intermediates == (root / "pki/card-inter.pem",)
    assert prod.test is False and prod.enabled is True
    assert prod.crl_sources == ("http://crl.example/ac.crl", str(root / "crl/local.crl"))
    assert cfg.authorities["test-cards"].test is True          # inferred from CN "TEST AC ..."
    assert cfg.authorities["off-cards"].enabled is False      # its missing file is not checked

    f = cfg.flows["2bis"]
    assert f.certificate == root / "pki/server-2bis/chain.pem"
    assert f.key == root / "pki/server-2bis/key.pem"
    assert f.client_auth is ClientAuth.REQUIRED
    assert f.authorities == ("prod-cards", "off-cards")
    assert f.card_types == (CardType.CPS, CardType.CPF)
    assert f.refuse_test_cards is True and f.verify_depth == 3
    assert f.tls.min_version == "1.3" and f.tls.session_tickets is False
    g = cfg.flows["igcsante"]
    assert g.refuse_test_cards is None and g.verify_depth == 4 and g.card_types == ()

    imap, smtp = cfg.listeners
    assert imap.name == "imap" and imap.protocol is Protocol.IMAP
    assert imap.binds == (Address("127.0.0.1", 10143), Address("::1", 10143))
    assert imap.hostname == "frontimap.mssante.fr"
    assert imap.backend == Backend(Address("127.0.0.1", 143), "none")
    assert imap.routes == (Route("2bis", ("frontimap.mssante.fr", "*.imap.mssante.fr")),
                           Route("igcsante", ("frontimap-igcsante.mssante.fr",)))
    assert imap.default_flow == "2bis" and imap.unknown_sni is UnknownSni.DEFAULT
    assert imap.timeouts == Timeouts(pretls=30.0, handshake=15.0, connect=5.0, idle=600.5)
    assert imap.max_line == 4096 and imap.max_pretls_commands == 32
    assert smtp.binds == (Address("127.0.0.1", 10587),)
    assert smtp.routes == () and smtp.default_flow == "igcsante"
    assert smtp.backend == Backend(Address("localhost", 587), "none")
    assert smtp.hostname == "sniproxy"


def test_workers_auto_and_defaults(work: Work) -> None:
    old = "workers: 2\nlog: {level: debug, format: json}\nstate_dir: state\n"
    path = work.write(BASE, {old: "workers: auto\ncrl: {cache_dir: /var/cache/sniproxy-crl}\n"})
    cfg = load(path).config
    assert cfg.workers is None and cfg.log_level == "info" and cfg.log_format == "auto"
    assert cfg.state_dir is None
    assert cfg.crl.cache_dir == Path("/var/cache/sniproxy-crl") and cfg.crl.refresh_max == 3600.0


def test_crl_sources_need_a_cache_dir(work: Work) -> None:
    old = "workers: 2\nlog: {level: debug, format: json}\nstate_dir: state\n"
    path = work.write(BASE, {old: "workers: auto\n"})
    (err,) = load_errors(path)
    assert "prod-cards" in err.message and "cache_dir" in err.message


def test_every_error_is_reported_in_one_pass(work: Work) -> None:
    path = work.write(BASE, {"verify_depth: 3": "verify_depth: 0", "protocol: smtp": "protocol: pop3",
                             "max_line: 4096": "max_line: big"})
    errors = load_errors(path)
    assert {e.key for e in errors} >= {"flows.2bis.verify_depth", "listeners[1].protocol",
                                       "listeners[0].max_line"}


# -- syntax, unknown keys, types, enums --------------------------------------------------------------
def test_yaml_syntax_error_has_a_line(work: Work) -> None:
    path = work.write(BASE, {"    verify_depth: 3\n": "    verify_depth: [3\n"})
    (err,) = load_errors(path)
    assert err.file == str(path) and err.line is not None
    assert "YAML syntax" in err.message
    assert line_of(work.text, "verify_depth: [3") <= err.line <= line_of(work.text, "verify_depth: [3") + 2


def test_unknown_key_lists_allowed_keys(work: Work) -> None:
    path = work.write(BASE, {"    verify_depth: 3": "    verfy_depth: 3"})
    err = assert_error(path, "flows.2bis.verfy_depth", line_of(work.text, "verfy_depth"), "unknown key")
    assert "verify_depth" in err.message and "certificate" in err.message


def test_unknown_top_level_and_listener_keys(work: Work) -> None:
    path = work.write(BASE, {"workers: 2": "workers: 2\nworker: 3",
                             "    max_line: 4096": "    maxline: 4096"})
    errors = load_errors(path)
    assert_error(path, "worker", line_of(work.text, "worker: 3"), "unknown key", errors)
    assert_error(path, "listeners[0].maxline", line_of(work.text, "maxline"), "unknown key", errors)


def test_wrong_type(work: Work) -> None:
    path = work.write(BASE, {"verify_depth: 3": 'verify_depth: "four"'})
    assert_error(path, "flows.2bis.verify_depth", line_of(work.text, "verify_depth"), "expected an integer")


def test_boolean_is_not_an_integer(work: Work) -> None:
    path = work.write(BASE, {"max_line: 4096": "max_line: true"})
    assert_error(path, "listeners[0].max_line", line_of(work.text, "max_line"), "expected an integer")


def test_bad_enum_value(work: Work) -> None:
    path = work.write(BASE, {"client_auth: required": "client_auth: sometimes"})
    err = assert_error(path, "flows.2bis.client_auth", line_of(work.text, "client_auth"), "invalid value")
    assert "required, optional, none" in err.message


def test_bad_card_type(work: Work) -> None:
    path = work.write(BASE, {"card_types: [CPS, cpf]": "card_types:\n      - CPS\n      - CPX"})
    assert_error(path, "flows.2bis.card_types[1]", line_of(work.text, "- CPX"), "invalid card type")


def test_missing_required_key_points_at_its_mapping(work: Work) -> None:
    path = work.write(BASE, {"    certificate: pki/server-igcsante/chain.pem\n": ""})
    assert_error(path, "flows.igcsante", line_of(work.text, "  igcsante:"),
                 "missing required key 'certificate'")


def test_duplicate_yaml_key(work: Work) -> None:
    path = work.write(BASE, {"    verify_depth: 3": "    verify_depth: 3\n    verify_depth: 5"})
    assert_error(path, "flows.2bis.verify_depth", line_of(work.text, "verify_depth: 5"), "duplicate key")


def test_workers_out_of_range(work: Work) -> None:
    path = work.write(BASE, {"workers: 2": "workers: 0"})
    assert_error(path, "workers", 2, "auto")


def test_cipher_list_checked_with_openssl(work: Work) -> None:
    path = work.write(BASE, {'min_version: "1.3",': 'min_version: "1.3", ciphers: "NOPE-CIPHER",'})
    assert_error(path, "flows.2bis.tls.ciphers", line_of(work.text, "NOPE-CIPHER"), "no cipher")


# -- files -------------------------------------------------------------------------------------------
def test_missing_file(work: Work) -> None:
    (work.root / "pki/server-2bis/chain.pem").unlink()
    path = work.write(BASE)
    assert_error(path, "flows.2bis.certificate", line_of(BASE, "server-2bis/chain.pem"), "file not found")


def test_not_pem(work: Work) -> None:
    write(work.root / "pki/card-inter.pem", b"hello\n")
    path = work.write(BASE)
    assert_error(path, "authorities.prod-cards.intermediates[0]", line_of(BASE, "card-inter.pem"),
                 "not a PEM certificate file")


def test_bad_key_file(work: Work) -> None:
    write(work.root / "pki/server-2bis/key.pem", work.pki.leaf_2bis.pem())
    path = work.write(BASE)
    assert_error(path, "flows.2bis.key", line_of(BASE, "server-2bis/key.pem"), "not a PEM private key")


def test_encrypted_key_refused(work: Work) -> None:
    write(work.root / "pki/server-2bis/key.pem", work.pki.leaf_2bis.key_pem(b"secret"))
    path = work.write(BASE)
    assert_error(path, "flows.2bis.key", line_of(BASE, "server-2bis/key.pem"), "encrypted")


def test_key_must_match_certificate(work: Work) -> None:
    path = work.write(BASE, {"key: pki/server-igcsante/key.pem": "key: pki/server-2bis/key.pem"})
    assert_error(path, "flows.igcsante.key", line_of(work.text, "server-2bis/key.pem", 2),
                 "does not match the certificate")


def test_server_chain_must_be_complete(work: Work) -> None:
    write(work.root / "pki/server-2bis/chain.pem", work.pki.leaf_2bis.pem() + work.pki.other_ca.pem())
    path = work.write(BASE)
    err = assert_error(path, "flows.2bis.certificate", line_of(BASE, "server-2bis/chain.pem"), "chain broken")
    assert "CN=AC AUTRE" in err.message


def test_chain_signature_is_verified_not_only_names(work: Work) -> None:
    # an impostor CA with the same subject as the real intermediate but another key
    impostor = make_cert("AC SERVEURS", make_cert("AC RACINE SERVEURS", ca=True), ca=True)
    assert impostor.cert.subject == work.pki.srv_inter.cert.subject
    write(work.root / "pki/server-2bis/chain.pem", work.pki.leaf_2bis.pem() + impostor.pem())
    path = work.write(BASE)
    err = assert_error(path, "flows.2bis.certificate", line_of(BASE, "server-2bis/chain.pem"), "chain broken")
    assert "signature" in err.message


def test_lone_leaf_is_a_warning(work: Work) -> None:
    write(work.root / "pki/server-2bis/chain.pem", work.pki.leaf_2bis.pem())
    path = work.write(BASE)
    assert_warning(load(path), path, "flows.2bis.certificate", line_of(BASE, "server-2bis/chain.pem"),
                   "holds only the leaf")


def test_one_file_may_hold_key_and_chain(work: Work) -> None:
    leaf = work.pki.leaf_igcsante
    write(work.root / "pki/igc.pem", leaf.key_pem() + leaf.pem() + work.pki.srv_inter.pem())
    old = "certificate: pki/server-igcsante/chain.pem\n    key: pki/server-igcsante/key.pem"
    path = work.write(BASE, {old: "certificate: &srv pki/igc.pem\n    key: *srv"})
    flow = load(path).config.flows["igcsante"]
    assert flow.certificate == flow.key == work.root / "pki/igc.pem"


@pytest.mark.parametrize(("days", "expired"), [(10, False), (-1, True)])
def test_server_certificate_expiry(work: Work, days: float, expired: bool) -> None:
    leaf = make_cert("frontimap.mssante.fr", work.pki.srv_inter, days=days)
    write(work.root / "pki/server-2bis/chain.pem", leaf.pem() + work.pki.srv_inter.pem())
    write(work.root / "pki/server-2bis/key.pem", leaf.key_pem())
    path = work.write(BASE)
    line = line_of(BASE, "server-2bis/chain.pem")
    if expired:
        assert_error(path, "flows.2bis.certificate", line, "expired on")
    else:
        assert_warning(load(path), path, "flows.2bis.certificate", line, "expires on")


def test_private_key_readable_by_others_is_refused(work: Work) -> None:
    os.chmod(work.root / "pki/server-2bis/key.pem", 0o644)
    path = work.write(BASE)
    assert_error(path, "flows.2bis.key", line_of(BASE, "server-2bis/key.pem"), "readable by group or others")


def test_secret_files_warn_opt_out_for_secret_mounts(work: Work) -> None:
    os.chmod(work.root / "pki/server-2bis/key.pem", 0o640)
    path = work.write(BASE, {"workers: 2\n": "workers: 2\nsecret_files: warn\n"})
    assert_warning(load(path), path, "flows.2bis.key", line_of(work.text, "server-2bis/key.pem"),
                   "secret_files: warn")
    bad = work.write(BASE, {"workers: 2\n": "workers: 2\nsecret_files: lax\n"})
    assert_error(bad, "secret_files", 3, "strict")


def test_authority_roots_must_be_ca(work: Work) -> None:
    path = work.write(BASE, {"roots: [pki/card-root.pem]": "roots: [pki/leaf.pem]"})
    assert_error(path, "authorities.prod-cards.roots[0]", line_of(work.text, "pki/leaf.pem"),
                 "not a CA certificate")


def test_relative_paths_resolve_against_config_folder(work: Work, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = work.write(BASE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load(path).config.flows["2bis"].key == work.root / "pki/server-2bis/key.pem"


def test_check_files_false_reads_no_file(work: Work) -> None:
    path = work.write(BASE, {"pki/server-2bis/chain.pem": "pki/nowhere.pem"})
    assert load(path, check_files=False).config.flows["2bis"].certificate == work.root / "pki/nowhere.pem"
    assert_error(path, "flows.2bis.certificate", line_of(work.text, "nowhere.pem"), "file not found")


# -- cross-references --------------------------------------------------------------------------------
def test_unknown_authority_set(work: Work) -> None:
    path = work.write(BASE, {"authorities: [prod-cards, off-cards]": "authorities: [prod-card, off-cards]"})
    err = assert_error(path, "flows.2bis.authorities[0]", line_of(work.text, "[prod-card, off"),
                       "unknown authority set 'prod-card'")
    assert "prod-cards" in err.message


def test_unknown_flow_in_sni_route(work: Work) -> None:
    path = work.write(BASE, {"frontimap.mssante.fr: 2bis": "frontimap.mssante.fr: 2ter"})
    assert_error(path, "listeners[0].sni.frontimap.mssante.fr",
                 line_of(work.text, "frontimap.mssante.fr: 2ter"), "unknown flow '2ter'")


def test_unknown_single_flow_and_default_flow(work: Work) -> None:
    path = work.write(BASE, {"flow: igcsante": "flow: igc", "default_flow: 2bis": "default_flow: 2bi"})
    errors = load_errors(path)
    assert_error(path, "listeners[1].flow", line_of(work.text, "flow: igc"), "unknown flow 'igc'", errors)
    assert_error(path, "listeners[0].default_flow", line_of(work.text, "default_flow: 2bi"), "unknown flow",
                 errors)


def test_flow_and_sni_are_exclusive(work: Work) -> None:
    path = work.write(BASE, {"    default_flow: 2bis": "    default_flow: 2bis\n    flow: 2bis"})
    assert_error(path, "listeners[0].sni", line_of(work.text, "    sni:"), "not both")


def test_sni_without_default_flow(work: Work) -> None:
    path = work.write(BASE, {"    default_flow: 2bis\n": ""})
    assert_error(path, "listeners[0].default_flow", line_of(work.text, "    sni:"),
                 "default_flow is required")


def test_sni_reject_needs_no_default_flow(work: Work) -> None:
    path = work.write(BASE, {"    default_flow: 2bis\n": "    unknown_sni: reject\n"})
    imap = load(path).config.listeners[0]
    assert imap.default_flow is None and imap.unknown_sni is UnknownSni.REJECT


def test_sni_names_unique_case_insensitive(work: Work) -> None:
    path = work.write(BASE, {'      "*.imap.mssante.fr": 2bis': "      FrontImap.MSSANTE.fr: igcsante"})
    err = assert_error(path, "listeners[0].sni.FrontImap.MSSANTE.fr", line_of(work.text, "FrontImap.MSSANTE"),
                       "already routed")
    assert f"line {line_of(work.text, 'frontimap.mssante.fr: 2bis')}" in err.message


@pytest.mark.parametrize("name", ["bad_name.mssante.fr", "*.*.mssante.fr", "a*.mssante.fr", "*.fr",
                                  "trailing.dot.", "192.0.2.1", "-x.mssante.fr"])
def test_sni_name_syntax(work: Work, name: str) -> None:
    path = work.write(BASE, {'      "*.imap.mssante.fr": 2bis': f'      "{name}": 2bis'})
    assert_error(path, f"listeners[0].sni.{name}", line_of(work.text, f'"{name}"'), "invalid")


@pytest.mark.parametrize("bind", ["127.0.0.1:70000", "127.0.0.1:0", "::1:143", "example.org:143",
                                  "127.0.0.1", "[127.0.0.1]:143", "127.0.0.1:http"])
def test_bind_address_syntax(work: Work, bind: str) -> None:
    path = work.write(BASE, {'bind: ["127.0.0.1:10143", "[::1]:10143"]': f'bind: ["{bind}", "[::1]:10143"]'})
    assert_error(path, "listeners[0].bind[0]", line_of(work.text, "bind: ["), "invalid address")


def test_bind_duplicated_across_listeners(work: Work) -> None:
    path = work.write(BASE, {"bind: 127.0.0.1:10587": 'bind: "[0:0::1]:10143"'})
    assert_error(path, "listeners[1].bind", line_of(work.text, "[0:0::1]"), "already bound")


def test_bind_overlapping_wildcard(work: Work) -> None:
    path = work.write(BASE, {"bind: 127.0.0.1:10587": 'bind: "0.0.0.0:10143"'})
    assert_error(path, "listeners[1].bind", line_of(work.text, "0.0.0.0:10143"), "already bound")


def test_listener_names_unique(work: Work) -> None:
    path = work.write(BASE, {"name: smtp": "name: imap"})
    assert_error(path, "listeners[1].name", line_of(work.text, "name: imap", 2), "already used")


def test_bad_backend(work: Work) -> None:
    path = work.write(BASE, {"identity: none": "identity: sasl"})
    assert_error(path, "listeners[1].backend.identity", line_of(work.text, "identity: sasl"), "invalid value")


# -- authorities and profile -------------------------------------------------------------------------
def test_client_auth_needs_an_enabled_authority(work: Work) -> None:
    path = work.write(BASE, {"authorities: [prod-cards, off-cards]": "authorities: [off-cards]"})
    assert_error(path, "flows.2bis.authorities", line_of(work.text, "authorities: [off-cards]"),
                 "at least one enabled authority set")


def test_disabled_authority_is_simply_unused(work: Work) -> None:
    loaded = load(work.write(BASE))
    assert "off-cards" in loaded.config.flows["2bis"].authorities
    assert not loaded.config.authorities["off-cards"].enabled


def test_production_refuses_test_chains(work: Work) -> None:
    path = work.write(BASE, {"authorities: [prod-cards, off-cards]": "authorities: [prod-cards, test-cards]"})
    assert_error(path, "flows.2bis.authorities[1]", line_of(work.text, "[prod-cards, test-cards]"),
                 "test chains are never trusted in production")


def test_test_profile_refuses_production_chains(work: Work) -> None:
    path = work.write(BASE, {"profile: production": "profile: test",
                             "authorities: [prod-cards, off-cards]": "authorities: [test-cards]"})
    errors = load_errors(path)
    assert_error(path, "flows.igcsante.authorities[0]", line_of(work.text, "authorities: [prod-cards]"),
                 "production chain", errors)
    assert not [e for e in errors if e.key and e.key.startswith("flows.2bis")]


def test_test_inference_on_real_public_cas(work: Work) -> None:
    public = REPO / "conf/pki/public"
    text = BASE.replace("  test-cards:\n    roots: [pki/test-root.pem]",
                        f"  test-cards:\n    roots: [{public}/ACR-ST-TEST.pem]\n"
                        f"    intermediates: [{public}/ACI-ST-PP-TEST.pem]\n"
                        f"  el-prod:\n    roots: [{public}/ACR-EL.pem]\n"
                        f"    intermediates: [{public}/ACI-EL-ORG.pem]")
    cfg = load(work.write(text)).config
    assert cfg.authorities["test-cards"].test is True
    assert cfg.authorities["el-prod"].test is False


def test_declared_test_flag_wins_but_contradiction_warns(work: Work) -> None:
    old = "    roots: [pki/test-root.pem]"
    path = work.write(BASE, {old: old + "\n    test: false"})
    loaded = load(path)
    assert loaded.config.authorities["test-cards"].test is False
    assert_warning(loaded, path, "authorities.test-cards.test", line_of(work.text, "test: false"), "TEST")


def test_unused_flow_is_a_warning_and_empty_list_is_empty(work: Work) -> None:
    path = work.write(BASE, {"flow: igcsante": "flow: 2bis",
                             "igcsante.mssante.fr: igcsante": "x.mssante.fr: 2bis",
                             "intermediates: [pki/card-inter.pem]": "intermediates:"})
    loaded = load(path)
    assert_warning(loaded, path, "flows.igcsante", line_of(work.text, "  igcsante:"), "used by no listener")
    assert loaded.config.authorities["prod-cards"].intermediates == ()


def test_crl_scheme_checked(work: Work) -> None:
    path = work.write(BASE, {'"http://crl.example/ac.crl"': '"ftp://crl.example/ac.crl"'})
    assert_error(path, "authorities.prod-cards.crl[0]", line_of(work.text, "ftp://"),
                 "unsupported CRL source")


# -- helpers and shipped configs ---------------------------------------------------------------------
def test_parse_address_normalises() -> None:
    assert parse_address("[0:0::1]:443") == Address("::1", 443)
    assert parse_address("localhost:25", allow_localhost=True) == Address("localhost", 25)
    with pytest.raises(ValueError, match="IPv4"):
        parse_address("localhost:25")


def test_missing_config_file(tmp_path: Path) -> None:
    (err,) = load_errors(tmp_path / "nope.yaml")
    assert err.file == str(tmp_path / "nope.yaml") and "cannot read" in err.message


@pytest.mark.parametrize("name", ["mssante-bi-flux.yaml", "mssante-mono-flux.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    path = REPO / "conf" / name
    loaded = load(path, check_files=False)
    assert loaded.config.profile is Profile.PRODUCTION
    assert {lr.name for lr in loaded.config.listeners} == {"imap", "submission", "ws"}
    admin = loaded.config.admin    # the admin endpoint on loopback (the Helm chart binds the pod IP)
    assert admin is not None and (admin.bind.host, admin.bind.port) == ("127.0.0.1", 9100)
    # With file checks, the only problems are the operator's files not shipped in the repository.
    errors = load_errors(path)
    assert errors
    for err in errors:
        assert err.message.startswith("file not found: ") and "/conf/pki/operator/" in err.message, str(err)


def test_shipped_bi_flux_matches_the_notice() -> None:
    cfg = load(REPO / "conf/mssante-bi-flux.yaml", check_files=False).config
    by_name = {lr.name: lr for lr in cfg.listeners}
    assert by_name["imap"].routes == (Route("2bis", ("frontimap.mssante.fr",)),
                                      Route("igcsante", ("frontimap-igcsante.mssante.fr",)))
    assert by_name["submission"].routes == (Route("2bis", ("frontsmtp.mssante.fr",)),
                                            Route("igcsante", ("frontsmtp-igcsante.mssante.fr",)))
    assert by_name["ws"].routes == (Route("2bis", ("mss-msg.mssante.fr", "mss-idp.mssante.fr")),
                                    Route("igcsante", ("mss-msg-igcsante.mssante.fr", "mss-idp-igcsante.mssante.fr")))
    assert all(lr.default_flow == "2bis" for lr in cfg.listeners)
    assert {lr.binds[0].port for lr in cfg.listeners} == {143, 587, 443}
    for flow in cfg.flows.values():
        enabled = [a for a in flow.authorities if cfg.authorities[a].enabled]
        assert enabled == ["igc-cps-2ter", "igc-sante-fort-pp"]
    assert cfg.authorities["igc-sante-standard-pp"].enabled is False


def test_public_pems_match_readme_fingerprints() -> None:
    readme = (REPO / "conf/pki/public/README.md").read_text()
    for pem in sorted((REPO / "conf/pki/public").glob("*.pem")):
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        fp = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
        assert f"| {pem.name} |" in readme and fp in readme, pem.name


# -- limits, TLS policy, timeout spellings --------------------------------------------------------------

def test_limits_defaults_and_values(work: Work) -> None:
    assert load(work.write(BASE)).config.limits == Limits()
    text = BASE.replace("state_dir: state\n", "state_dir: state\nlimits:\n  max_connections: 500\n"
                        "  max_per_ip: 50\n  max_pending: 100\n  max_pending_per_ip: 10\n")
    assert load(work.write(text)).config.limits == Limits(500, 50, 100, 10)


def test_limits_errors_name_line_and_key(work: Work) -> None:
    text = BASE.replace("state_dir: state\n", "state_dir: state\nlimits:\n  max_connections: 0\n  max_pendng: 3\n")
    path = work.write(text)
    assert_error(path, "limits.max_connections", line_of(text, "max_connections"), "")
    assert_error(path, "limits.max_pendng", line_of(text, "max_pendng"), "max_pending_per_ip")


def test_limits_warn_when_one_address_can_take_every_slot(work: Work) -> None:
    text = BASE.replace("state_dir: state\n", "state_dir: state\nlimits:\n  max_connections: 10\n"
                        "  max_per_ip: 20\n")
    path = work.write(text)
    assert_warning(load(path), path, "limits.max_per_ip", line_of(text, "max_per_ip"), "every slot")


def test_timeouts_accept_durations(work: Work) -> None:
    path = work.write(BASE, {"timeouts: {pretls: 30, idle: 600.5}": 'timeouts: {pretls: "30s", idle: 45m}'})
    t = load(path).config.listeners[0].timeouts
    assert (t.pretls, t.idle) == (30.0, 2700.0)
    bad = work.write(BASE, {"timeouts: {pretls: 30, idle: 600.5}": "timeouts: {pretls: soon}"})
    assert_error(bad, "listeners[0].timeouts.pretls", line_of(work.text, "pretls"), "duration")


def test_bad_sigalgs_and_suites_are_errors(work: Work) -> None:
    path = work.write(BASE, {'min_version: "1.3",': 'min_version: "1.3", sigalgs: "RSA+NOPE", '
                                                   'ciphersuites: "TLS_NOPE",'})
    assert_error(path, "flows.2bis.tls.sigalgs", line_of(work.text, "RSA+NOPE"), "signature algorithms")
    assert_error(path, "flows.2bis.tls.ciphersuites", line_of(work.text, "TLS_NOPE"), "TLS 1.3 suite")


def test_weaker_policy_is_a_warning(work: Work) -> None:
    path = work.write(BASE, {'min_version: "1.3",': 'min_version: "1.2", ciphers: "ECDHE-RSA-AES128-SHA:'
                                                   'ECDHE-RSA-AES128-GCM-SHA256", sigalgs: "RSA+SHA256:RSA+SHA1",'})
    loaded = load(path)
    line = line_of(work.text, "ECDHE-RSA-AES128-SHA")
    assert_warning(loaded, path, "flows.2bis.tls.ciphers", line, "ECDHE-RSA-AES128-SHA")
    assert_warning(loaded, path, "flows.2bis.tls.sigalgs", line, "RSA+SHA1")
    assert not any("ECDHE-RSA-AES128-GCM-SHA256" in w for w in loaded.warnings)


def test_default_policy_is_clean_and_accepted() -> None:
    assert policy_problems(TlsPolicy()) == []
    assert policy_weaknesses(TlsPolicy()) == []


def test_policy_weaknesses_each_kind() -> None:
    weak = TlsPolicy(ciphers="AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA384", ciphersuites="TLS_AES_128_CCM_8_SHA256",
                     groups="X25519:ffdhe2048", sigalgs="RSA+SHA1:ECDSA+SHA256", session_tickets=True)
    keys = dict(policy_weaknesses(weak))
    assert "AES128-GCM-SHA256" in keys["ciphers"] and "ECDHE-RSA-AES256-SHA384" in keys["ciphers"]
    assert "CCM_8" in keys["ciphersuites"] and "ffdhe2048" in keys["groups"]
    assert "RSA+SHA1" in keys["sigalgs"] and "session_tickets" in keys
