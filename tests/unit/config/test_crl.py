"""sniproxy.config.load, CRL part: per-set `crl` (list or mapping), the top-level `crl` section, durations,
and the CRL distribution points taken from the CA certificates."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sniproxy.config.fields import parse_duration
from sniproxy.config.load import load
from sniproxy.config.model import CrlSettings
from sniproxy.config.pemfiles import distribution_points
from tests.unit.config.test_config import (
    BASE,
    Cert,
    Pki,
    Work,
    assert_error,
    assert_warning,
    line_of,
    load_errors,
    pki,  # noqa: F401 - a fixture, shared with test_config
    work,  # noqa: F401 - a fixture, shared with test_config
    write,
)

NOW = dt.datetime.now(dt.UTC)
CRL_LINE = '    crl: ["http://crl.example/ac.crl", crl/local.crl]'
STATE_LINE = "state_dir: state\n"
SET = "authorities.prod-cards.crl"


def with_set_crl(work: Work, block: str) -> Path:
    """BASE with the prod-cards `crl` line replaced by ``block`` (indented under the set)."""
    return work.write(BASE, {CRL_LINE: block.rstrip("\n")})


def with_top_crl(work: Work, block: str) -> Path:
    return work.write(BASE, {STATE_LINE: STATE_LINE + block})


# -- per-set crl: list (old form) and mapping ----------------------------------------------------------
def test_list_form_keeps_its_meaning(work: Work) -> None:
    aset = load(work.write(BASE)).config.authorities["prod-cards"]
    assert aset.crl_sources == ("http://crl.example/ac.crl", str(work.root / "crl/local.crl"))
    assert (aset.crl_check, aset.crl_grace, aset.crl_from_certificates) == ("chain", None, False)
    assert aset.revocation_required is True
    other = load(work.write(BASE)).config.authorities["test-cards"]
    assert other.crl_sources == () and other.revocation_required is False


def test_empty_crl_means_no_revocation(work: Work) -> None:
    aset = load(with_set_crl(work, "    crl:")).config.authorities["prod-cards"]
    assert aset.crl_sources == () and aset.revocation_required is False


def test_mapping_form(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources:
        - "ldap://annuaire.example/cn=AC%20CARTES,o=X?certificateRevocationList;binary?base?objectClass=pkiCA"
        - crl/local.crl
      from_certificates: false
      check: leaf
      stale: {grace: 6h}
""")
    loaded = load(path)
    aset = loaded.config.authorities["prod-cards"]
    assert aset.crl_sources == (
        "ldap://annuaire.example/cn=AC%20CARTES,o=X?certificateRevocationList;binary?base?objectClass=pkiCA",
        str(work.root / "crl/local.crl"))
    assert (aset.crl_check, aset.crl_grace, aset.crl_from_certificates) == ("leaf", 21600.0, False)
    assert aset.revocation_required is True
    assert loaded.warnings == ()


def test_mapping_defaults_and_fail_closed(work: Work) -> None:
    path = with_set_crl(work, '    crl: {sources: ["https://crl.example/a.crl"], stale: fail-closed}')
    aset = load(path).config.authorities["prod-cards"]
    assert aset.crl_sources == ("https://crl.example/a.crl",)
    assert (aset.crl_check, aset.crl_grace, aset.crl_from_certificates) == ("chain", None, False)


@pytest.mark.parametrize(("stale", "grace"), [("{grace: 90}", 90.0), ("{grace: 15m}", 900.0),
                                              ('{grace: "2d"}', 172800.0), ("{grace: 1.5}", 1.5)])
def test_grace_durations(work: Work, stale: str, grace: float) -> None:
    path = with_set_crl(work, f'    crl: {{sources: ["http://a.example/x.crl"], stale: {stale}}}')
    assert load(path).config.authorities["prod-cards"].crl_grace == grace


def test_unknown_key_in_set_crl(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources: ["http://a.example/x.crl"]
      refresh_max: 1h
""")
    err = assert_error(path, f"{SET}.refresh_max", line_of(work.text, "refresh_max: 1h"), "unknown key")
    assert "sources" in err.message and "from_certificates" in err.message and "stale" in err.message


@pytest.mark.parametrize("value", ["open", "fail-open", "null", "30", "[grace, 1h]"])
def test_bad_stale(work: Work, value: str) -> None:
    path = with_set_crl(work, f"""\
    crl:
      sources: ["http://a.example/x.crl"]
      stale: {value}
""")
    assert_error(path, f"{SET}.stale", line_of(work.text, "stale:"), "fail-closed")


def test_stale_mapping_without_grace(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources: ["http://a.example/x.crl"]
      stale: {}
""")
    assert_error(path, f"{SET}.stale", line_of(work.text, "stale:"), "{grace: DURATION}")


def test_stale_mapping_with_an_unknown_key(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources: ["http://a.example/x.crl"]
      stale:
        grace: 1h
        max: 2h
""")
    err = assert_error(path, f"{SET}.stale.max", line_of(work.text, "max: 2h"), "unknown key")
    assert "grace" in err.message


@pytest.mark.parametrize("value", ["0", "0s", "-1h", "soon", "1w", "[1]", "true", "null"])
def test_bad_grace(work: Work, value: str) -> None:
    path = with_set_crl(work, f"""\
    crl:
      sources: ["http://a.example/x.crl"]
      stale:
        grace: {value}
""")
    assert_error(path, f"{SET}.stale.grace", line_of(work.text, "grace:"), "duration")


def test_bad_check(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources: ["http://a.example/x.crl"]
      check: intermediates
""")
    err = assert_error(path, f"{SET}.check", line_of(work.text, "check: intermediates"), "invalid value")
    assert "chain" in err.message and "leaf" in err.message


def test_bad_from_certificates(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources: ["http://a.example/x.crl"]
      from_certificates: "yes"
""")
    assert_error(path, f"{SET}.from_certificates", line_of(work.text, "from_certificates:"), "true or false")


@pytest.mark.parametrize("block", ["    crl: {}", "    crl: {sources: [], from_certificates: false}",
                                   "    crl: {check: leaf}"])
def test_mapping_without_any_source(work: Work, block: str) -> None:
    path = with_set_crl(work, block)
    assert_error(path, f"{SET}.sources", line_of(work.text, "crl: {"), "no CRL source")


def test_scheme_checked_in_mapping_sources(work: Work) -> None:
    path = with_set_crl(work, """\
    crl:
      sources:
        - "http://a.example/x.crl"
        - "ftp://a.example/x.crl"
""")
    err = assert_error(path, f"{SET}.sources[1]", line_of(work.text, "ftp://"), "unsupported CRL source scheme")
    assert "ldaps" in err.message


def test_source_must_be_a_string(work: Work) -> None:
    path = with_set_crl(work, "    crl: {sources: [12]}")
    assert_error(path, f"{SET}.sources[0]", line_of(work.text, "sources: [12]"), "non-empty string")


def test_set_crl_as_a_scalar_is_an_error(work: Work) -> None:
    path = with_set_crl(work, '    crl: "http://a.example/x.crl"')
    assert_error(path, SET, line_of(work.text, "crl: \"http"), "expected a list")


# -- from_certificates ----------------------------------------------------------------------------------
def ca_with_cdp(cn: str, issuer: Cert | None, uris: list[str], *, dirname: bool = False) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    points = [x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(u) for u in uris],
                                     relative_name=None, reasons=None, crl_issuer=None)]
    if dirname:
        points.append(x509.DistributionPoint(full_name=[x509.DirectoryName(name)], relative_name=None,
                                             reasons=None, crl_issuer=None))
    cert = (x509.CertificateBuilder().subject_name(name)
            .issuer_name(issuer.cert.subject if issuer else name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.CRLDistributionPoints(points), critical=False)
            .sign(issuer.key if issuer else key, hashes.SHA256()))
    return Cert(cert, key)


ROOT_CRL = "http://crl.example/racine.crl"
INTER_CRL = "http://crl.example/ac-cartes.crl"
INTER_LDAP = "ldap://ldap.example/cn=AC%20CARTES,o=X?certificateRevocationList;binary?base?objectClass=pkiCA"


@pytest.fixture(scope="module")
def cdp_cas() -> tuple[Cert, Cert]:
    root = ca_with_cdp("AC RACINE CDP", None, [ROOT_CRL])
    inter = ca_with_cdp("AC CARTES CDP", root, [INTER_CRL, "file:///etc/x.crl", INTER_LDAP, ROOT_CRL],
                        dirname=True)
    return root, inter


def test_distribution_points(cdp_cas: tuple[Cert, Cert], pki: Pki) -> None:
    root, inter = cdp_cas
    assert distribution_points([root.cert, inter.cert, pki.card_root.cert]) == [ROOT_CRL, INTER_CRL, INTER_LDAP]
    assert distribution_points([inter.cert]) == [INTER_CRL, INTER_LDAP, ROOT_CRL]
    assert distribution_points([pki.card_root.cert]) == []
    assert distribution_points([]) == []


def test_from_certificates_adds_the_cas_points(work: Work, cdp_cas: tuple[Cert, Cert]) -> None:
    root, inter = cdp_cas
    write(work.root / "pki" / "cdp-root.pem", root.pem())
    write(work.root / "pki" / "cdp-inter.pem", inter.pem())
    path = work.write(BASE, {
        "    roots: [pki/card-root.pem]\n    intermediates: [pki/card-inter.pem]\n" + CRL_LINE:
        "    roots: [pki/cdp-root.pem]\n    intermediates: [pki/cdp-inter.pem]\n"
        f'    crl: {{sources: ["{INTER_CRL}", crl/local.crl], from_certificates: true}}'})
    loaded = load(path)
    aset = loaded.config.authorities["prod-cards"]
    # explicit sources first, then the certificates' points (roots before intermediates), without repeats
    assert aset.crl_sources == (INTER_CRL, str(work.root / "crl/local.crl"), ROOT_CRL, INTER_LDAP)
    assert aset.crl_from_certificates is True and aset.revocation_required is True
    assert loaded.warnings == ()


def test_from_certificates_alone_is_enough(work: Work, cdp_cas: tuple[Cert, Cert]) -> None:
    root, inter = cdp_cas
    write(work.root / "pki" / "cdp-root.pem", root.pem())
    write(work.root / "pki" / "cdp-inter.pem", inter.pem())
    path = work.write(BASE, {
        "    roots: [pki/card-root.pem]\n    intermediates: [pki/card-inter.pem]\n" + CRL_LINE:
        "    roots: [pki/cdp-root.pem]\n    intermediates: [pki/cdp-inter.pem]\n"
        "    crl: {from_certificates: true, check: leaf}"})
    aset = load(path).config.authorities["prod-cards"]
    assert aset.crl_sources == (ROOT_CRL, INTER_CRL, INTER_LDAP) and aset.crl_check == "leaf"


def test_from_certificates_without_points_warns_and_still_requires(work: Work) -> None:
    path = with_set_crl(work, "    crl: {from_certificates: true}")
    loaded = load(path)
    aset = loaded.config.authorities["prod-cards"]
    assert aset.crl_sources == () and aset.crl_from_certificates is True
    assert aset.revocation_required is True            # asked for revocation: fail closed, not unchecked
    assert_warning(loaded, path, SET, line_of(work.text, "crl: {from_certificates"), "no CRL distribution point")


def test_from_certificates_needs_a_cache_dir_too(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: "", CRL_LINE: "    crl: {from_certificates: true}"})
    errors = load_errors(path)
    (err,) = [e for e in errors if e.key == "state_dir"]
    assert "prod-cards" in err.message and "cache_dir" in err.message


def test_check_files_false_reads_no_distribution_point(work: Work) -> None:
    path = with_set_crl(work, '    crl: {from_certificates: true, sources: ["http://a.example/x.crl"]}')
    aset = load(path, check_files=False).config.authorities["prod-cards"]
    assert aset.crl_sources == ("http://a.example/x.crl",) and aset.crl_from_certificates is True


# -- top-level crl section -------------------------------------------------------------------------------
def test_top_level_section(work: Work) -> None:
    path = with_top_crl(work, """\
crl:
  cache_dir: cache/crl
  refresh_max: 6h
  retry_min: 90s
  timeout: 15
  max_bytes: 1048576
""")
    crl = load(path).config.crl
    assert crl == CrlSettings(cache_dir=work.root / "cache/crl", refresh_max=21600.0, retry_min=90.0,
                              timeout=15.0, max_bytes=1048576)


def test_top_level_defaults(work: Work) -> None:
    cfg = load(work.write(BASE)).config
    d = CrlSettings()
    assert cfg.crl == CrlSettings(cache_dir=work.root / "state" / "crl", refresh_max=d.refresh_max,
                                  retry_min=d.retry_min, timeout=d.timeout, max_bytes=d.max_bytes)
    assert (d.refresh_max, d.retry_min, d.timeout) == (3600.0, 30.0, 30.0)
    partial = load(with_top_crl(work, "crl: {retry_min: 2m}\n")).config.crl
    assert partial.retry_min == 120.0 and partial.cache_dir == work.root / "state" / "crl"
    assert partial.refresh_max == 3600.0


def test_absolute_cache_dir_without_state_dir(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: f"crl: {{cache_dir: {work.root / 'elsewhere'}}}\n"})
    cfg = load(path).config
    assert cfg.state_dir is None and cfg.crl.cache_dir == work.root / "elsewhere"


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("1.5", 1.5), ('"90"', 90.0), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("2d", 172800.0),
    ('" 2D "', 172800.0), ("1.5h", 5400.0), ("90S", 90.0),
])
def test_durations(work: Work, text: str, seconds: float) -> None:
    path = with_top_crl(work, f"crl:\n  refresh_max: {text}\n")
    assert load(path).config.crl.refresh_max == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-5", "-1m", "5x", "h", '""', "ten", "1w", "nan", "true", "[1]",
                                  "{a: 1}", "null", "1h30m"])
@pytest.mark.parametrize("key", ["refresh_max", "retry_min", "timeout"])
def test_bad_durations(work: Work, text: str, key: str) -> None:
    path = with_top_crl(work, f"crl:\n  {key}: {text}\n")
    assert_error(path, f"crl.{key}", line_of(work.text, f"  {key}:"), "duration")


def test_parse_duration_directly() -> None:
    assert parse_duration(5) == 5.0 and parse_duration("2d") == 172800.0 and parse_duration(" 15M ") == 900.0
    for bad in (True, None, "x", "", "m", [1], "1 h 2"):
        assert parse_duration(bad) is None, bad


def test_max_bytes(work: Work) -> None:
    path = with_top_crl(work, "crl:\n  max_bytes: 100\n")
    assert_error(path, "crl.max_bytes", line_of(work.text, "max_bytes: 100"), "out of range")
    path = with_top_crl(work, 'crl:\n  max_bytes: "1MB"\n')
    assert_error(path, "crl.max_bytes", line_of(work.text, "max_bytes:"), "expected an integer")


def test_unknown_top_level_crl_key(work: Work) -> None:
    path = with_top_crl(work, "crl:\n  cache_dir: c\n  stale: fail-closed\n")
    err = assert_error(path, "crl.stale", line_of(work.text, "  stale: fail-closed"), "unknown key")
    assert "refresh_max" in err.message and "max_bytes" in err.message


def test_top_level_crl_must_be_a_mapping(work: Work) -> None:
    path = with_top_crl(work, "crl: [a, b]\n")
    assert_error(path, "crl", line_of(work.text, "crl: [a, b]"), "expected a mapping")


def test_every_crl_error_in_one_pass(work: Work) -> None:
    path = work.write(BASE, {STATE_LINE: STATE_LINE + "crl: {refresh_max: soon, timeout: -1}\n",
                             CRL_LINE: "    crl: {sources: [x.crl], stale: open, check: all}"})
    keys = {e.key for e in load_errors(path)}
    assert keys >= {"crl.refresh_max", "crl.timeout", f"{SET}.stale", f"{SET}.check"}
