"""The ``cutover`` config list (errors located by file, line and key; validity warnings) and which
entries are in force at an instant (sniproxy.lifecycle.cutover)."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from sniproxy import cli
from sniproxy.config.load import load
from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.pki import TestPki, build
from sniproxy.errors import ConfigErrors
from sniproxy.lifecycle.build import compile_at
from sniproxy.lifecycle.cutover import in_force, next_instant

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


def _cfg(pki: TestPki, cutover: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = copy.deepcopy(config_dict(pki, DemoPorts(imap=10143, imaps=10993)))
    cfg["cutover"] = cutover
    return cfg


def _switch(pki: TestPki, at: Any, server: str = "igcsante") -> dict[str, Any]:
    return {"at": at, "flow": "2bis", "certificate": str(pki.servers[server].chain),
            "key": str(pki.servers[server].key)}


def _line(path: Path, needle: str, nth: int = 0) -> int:
    return [i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t][nth]


def test_entries_parsed_in_instant_order_and_applied_declaratively(pki: TestPki, tmp_path: Path) -> None:
    t1, t2 = NOW + dt.timedelta(hours=1), NOW + dt.timedelta(hours=2)
    cfg = _cfg(pki, [
        _switch(pki, t2.isoformat(), "2bis"),                                  # the rollback, written first
        _switch(pki, t1),                                                      # a YAML timestamp
        {"at": t1.isoformat().replace("+00:00", "Z"), "listener": "imap", "default_flow": "igcsante"},
    ])
    config = load(write_config(cfg, tmp_path / "c.yaml")).config
    assert [c.at for c in config.cutover] == [t1.timestamp(), t1.timestamp(), t2.timestamp()]
    assert config.cutover[0].flow == "2bis" and config.cutover[1].listener == "imap"
    base_cert = config.flows["2bis"].certificate
    # Before the first instant: the base config, and the next instant is t1.
    same, applied = in_force(config, NOW.timestamp())
    assert applied == () and same.flows["2bis"].certificate == base_cert
    assert next_instant(config, NOW.timestamp()) == t1.timestamp()
    # Between: the switch and the default flow change are in force.
    mid, applied = in_force(config, t1.timestamp())
    assert len(applied) == 2
    assert mid.flows["2bis"].certificate == pki.servers["igcsante"].chain
    assert next(ls for ls in mid.listeners if ls.name == "imap").default_flow == "igcsante"
    assert next_instant(config, t1.timestamp()) == t2.timestamp()
    # After the rollback: 2BIS certificate again; the default flow change stays.
    late, applied = in_force(config, t2.timestamp() + 1)
    assert len(applied) == 3 and late.flows["2bis"].certificate == pki.servers["2bis"].chain
    assert next_instant(config, t2.timestamp() + 1) is None
    # Compiled: the route table of the listener follows the switched default flow.
    built = compile_at(config, (), 5, t1.timestamp())
    assert built.snapshot.generation == 5 and built.snapshot.listeners["imap"].routes.choose(None) == "igcsante"
    assert compile_at(config, (), 5, NOW.timestamp()).snapshot.listeners["imap"].routes.choose(None) == "2bis"


@pytest.mark.parametrize(("entry", "key", "message"), [
    ({"at": "2026-06-01T06:00:00", "listener": "imap", "default_flow": "igcsante"}, "cutover[0].at",
     "UTC offset"),
    ({"at": "tomorrow", "listener": "imap", "default_flow": "igcsante"}, "cutover[0].at", "RFC 3339"),
    ({"at": "2030-01-01T00:00:00Z", "listener": "nope", "default_flow": "igcsante"}, "cutover[0].listener",
     "unknown listener 'nope'"),
    ({"at": "2030-01-01T00:00:00Z", "listener": "imap", "default_flow": "nope"}, "cutover[0].default_flow",
     "unknown flow 'nope'"),
    ({"at": "2030-01-01T00:00:00Z", "flow": "2bis", "listener": "imap"}, "cutover[0]", "either a flow"),
    ({"at": "2030-01-01T00:00:00Z", "flow": "2bis", "certificate": "x.pem"}, "cutover[0]",
     "missing required key 'key'"),
    ({"at": "2030-01-01T00:00:00Z", "listener": "imap", "default_flow": "2bis", "when": 1}, "cutover[0].when",
     "unknown key"),
])
def test_invalid_entries_are_located(pki: TestPki, tmp_path: Path, entry: dict[str, Any], key: str,
                                     message: str) -> None:
    path = write_config(_cfg(pki, [entry]), tmp_path / "c.yaml")
    with pytest.raises(ConfigErrors) as info:
        load(path)
    errors = [str(e) for e in info.value.errors]
    assert any(e.startswith(f"{path}:") and f": {key}: " in e and message in e for e in errors), errors


def test_key_not_matching_the_target_certificate_is_an_error(pki: TestPki, tmp_path: Path) -> None:
    entry = _switch(pki, "2030-01-01T00:00:00Z")
    entry["key"] = str(pki.servers["2bis"].key)
    path = write_config(_cfg(pki, [entry]), tmp_path / "c.yaml")
    with pytest.raises(ConfigErrors) as info:
        load(path)
    assert any("cutover[0].key" in str(e) for e in info.value.errors), info.value.errors


def test_single_flow_listener_has_no_default_flow_to_switch(pki: TestPki, tmp_path: Path) -> None:
    cfg = _cfg(pki, [{"at": "2030-01-01T00:00:00Z", "listener": "imap", "default_flow": "igcsante"}])
    ls = cfg["listeners"][0]
    for k in ("sni", "default_flow"):
        ls.pop(k)
    ls["flow"] = "2bis"
    path = write_config(cfg, tmp_path / "c.yaml")
    with pytest.raises(ConfigErrors) as info:
        load(path)
    line = _line(path, "listener: imap")
    assert any(str(e).startswith(f"{path}:{line}: cutover[0].listener: listener imap has a single flow")
               for e in info.value.errors), info.value.errors


def test_check_warns_when_the_2bis_certificate_expires_before_the_cutover(
        pki: TestPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The test PKI's server certificates expire about 3 years from now: a cutover in 5 years comes too late,
    # and the IGC Sante certificate it switches to is no longer valid then either.
    late = (NOW + dt.timedelta(days=5 * 365)).isoformat()
    path = write_config(_cfg(pki, [_switch(pki, late)]), tmp_path / "c.yaml")
    assert cli.main(["check", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    line = _line(path, "- at:")
    assert f"warning: {path}:{line}: cutover[0]: the certificate flow 2bis serves until this cutover" in err, err
    assert "expires on" in err and "before the cutover" in err
    assert f"warning: {path}:{line}: cutover[0].certificate: " in err and "is not valid at the cutover instant" in err
    # A cutover tomorrow: nothing to say.
    soon = (NOW + dt.timedelta(days=1)).isoformat()
    path = write_config(_cfg(pki, [_switch(pki, soon)]), tmp_path / "ok.yaml")
    assert cli.main(["check", "-c", str(path)]) == 0
    assert "cutover" not in capsys.readouterr().err


def test_default_flow_target_not_valid_at_its_instant_warns(pki: TestPki, tmp_path: Path) -> None:
    late = (NOW + dt.timedelta(days=5 * 365)).isoformat()
    path = write_config(_cfg(pki, [{"at": late, "listener": "imap", "default_flow": "igcsante"}]),
                        tmp_path / "c.yaml")
    warnings = load(path).warnings
    assert any("cutover[0].default_flow" in w and "not valid at the cutover instant" in w for w in warnings), warnings
