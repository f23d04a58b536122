"""``backend:`` identity options and ``proxy_protocol_from``: mapped into the model, errors located by line and key."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from sniproxy.config.load import Loaded, load
from sniproxy.config.model import Identity, ProxyV2Options
from sniproxy.errors import ConfigError, ConfigErrors

HEAD = """\
profile: production
authorities:
  cards: {roots: [root.pem], test: false}
flows:
  f: {certificate: c.pem, key: k.pem, authorities: [cards]}
listeners:
"""


def _write(tmp_path: Path, listeners: str) -> Path:
    path = tmp_path / "sniproxy.yaml"
    path.write_text(HEAD + listeners)
    return path


def _load(path: Path) -> Loaded:
    return load(path, check_files=False)


def _errors(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as exc:
        _load(path)
    return exc.value.errors


def _line(path: Path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    (tmp_path / "map.yaml").write_text('"810001234567": [alice@example.test, cabinet@example.test]\n'
                                       '"810009876543": bob@example.test\n')
    pw = tmp_path / "master.pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    return tmp_path


def test_proxy_v2_backend_and_proxy_protocol_from(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    proxy_protocol_from: ["10.0.0.0/8", "2001:db8::/32"]
    backend: {address: "127.0.0.1:10144", identity: proxy-v2, proxy_v2: {send_cn: true, crc32c: true}}
""")
    loaded = _load(path)
    ls = loaded.config.listeners[0]
    assert ls.backend.identity is Identity.PROXY_V2
    assert ls.backend.proxy_v2 == ProxyV2Options(send_cn=True, identity_tlvs=False, crc32c=True)
    assert ls.proxy_protocol_from == (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))
    assert loaded.warnings == ()


def test_bad_cidr_is_located(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    proxy_protocol_from:
      - "10.0.0.1/8"
    backend: "127.0.0.1:10143"
""")
    (err,) = _errors(path)
    assert err.key == "listeners[0].proxy_protocol_from[0]" and err.line == _line(path, "10.0.0.1/8")
    assert err.file == str(path) and "CIDR" in err.message


def test_unknown_identity_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend: {address: "127.0.0.1:10143", identity: sasl}
""")
    (err,) = _errors(path)
    assert err.key == "listeners[0].backend.identity" and err.line == _line(path, "identity: sasl")
    assert "proxy-v2" in err.message and "xclient" in err.message


def test_xclient_is_smtp_only(tmp_path: Path) -> None:
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend: {address: "127.0.0.1:10143", identity: xclient}
""")
    (err,) = _errors(path)
    assert err.key == "listeners[0].backend.identity" and "SMTP only" in err.message


def test_imap_login_with_master_user(tmp_path: Path, secrets: Path) -> None:
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend:
      address: "127.0.0.1:10143"
      login: {mapping: map.yaml, master_user: proxy-master, master_password_file: master.pw}
""")
    loaded = _load(path)
    login = loaded.config.listeners[0].backend.login
    assert login is not None and login.master_user == "proxy-master" and login.master_password == "s3cret"
    assert login.rule.mapping == {"810001234567": ("alice@example.test", "cabinet@example.test"),
                                  "810009876543": ("bob@example.test",)}
    assert "s3cret" not in repr(loaded.config)


def test_master_password_from_environment(tmp_path: Path, secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNIPROXY_PW", "from-env")
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend:
      address: "127.0.0.1:10143"
      login: {template: "{idnat_ps}@example.test", master_user: m, master_password_env: SNIPROXY_PW}
""")
    login = _load(path).config.listeners[0].backend.login
    assert login is not None and login.master_password == "from-env" and login.rule.template


def test_missing_env_secret_is_an_error_without_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNIPROXY_NOPE", raising=False)
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend:
      address: "127.0.0.1:10143"
      login: {template: "{idnat_ps}@example.test", master_user: m, master_password_env: SNIPROXY_NOPE}
""")
    errors = _errors(path)
    assert any(e.key == "listeners[0].backend.login.master_password_env" and "SNIPROXY_NOPE" in e.message
               for e in errors), errors


def test_imap_login_needs_a_master_user(tmp_path: Path, secrets: Path) -> None:
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend: {address: "127.0.0.1:10143", login: {mapping: map.yaml}}
""")
    (err,) = _errors(path)
    assert err.key == "listeners[0].backend.login.master_user" and "master" in err.message


def test_smtp_login_needs_xclient(tmp_path: Path, secrets: Path) -> None:
    path = _write(tmp_path, """\
  - name: smtp
    bind: "127.0.0.1:10587"
    protocol: smtp
    flow: f
    backend: {address: "127.0.0.1:25", login: {mapping: map.yaml}}
""")
    (err,) = _errors(path)
    assert err.key == "listeners[0].backend.login" and "xclient" in err.message


def test_mapping_file_errors_name_that_file(tmp_path: Path) -> None:
    (tmp_path / "map.yaml").write_text('"810001234567": alice@example.test\n"810001234567": bob@example.test\n'
                                       '"810009876543": [has space@example.test]\n')
    path = _write(tmp_path, """\
  - name: smtp
    bind: "127.0.0.1:10587"
    protocol: smtp
    flow: f
    backend: {address: "127.0.0.1:25", identity: xclient, login: {mapping: map.yaml}}
""")
    errors = _errors(path)
    mapfile = str(tmp_path / "map.yaml")
    assert {(e.file, e.line) for e in errors} == {(mapfile, 2), (mapfile, 3)}, errors


def test_check_warns_when_cn_and_master_login_are_mixed(tmp_path: Path, secrets: Path) -> None:
    """Dovecot's auth_ssl_username_from_cert would log in as the CN, whatever the master login says."""
    path = _write(tmp_path, """\
  - name: imap
    bind: "127.0.0.1:10143"
    protocol: imap
    flow: f
    backend:
      address: "127.0.0.1:10144"
      identity: proxy-v2
      login: {mapping: map.yaml, master_user: m, master_password_file: master.pw}
""")
    loaded = _load(path)
    (warning,) = loaded.warnings
    assert f"{path}:{_line(path, 'login:')}: listeners[0].backend.login:" in warning
    assert "auth_ssl_username_from_cert" in warning and "send_cn: false" in warning
    path.write_text(path.read_text().replace("identity: proxy-v2",
                                             "identity: proxy-v2\n      proxy_v2: {send_cn: false}"))
    assert _load(path).warnings == ()
