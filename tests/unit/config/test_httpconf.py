"""The ``http`` section of ``https`` listeners: defaults, mapping, errors located by file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sniproxy.config.load import load
from sniproxy.config.model import DEFAULT_CARD_HEADERS, HeaderProfile, HttpMode, HttpOptions, Protocol
from sniproxy.errors import ConfigError, ConfigErrors

HEAD = """\
profile: production
authorities:
  cards: {roots: [root.pem], test: false}
flows:
  f: {certificate: c.pem, key: k.pem, authorities: [cards], client_auth: optional}
listeners:
  - name: ws
    bind: "127.0.0.1:10443"
    protocol: https
    backend: "127.0.0.1:8080"
    flow: f
"""


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "sniproxy.yaml"
    path.write_text(HEAD + extra)
    return path


def _errors(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as exc:
        load(path, check_files=False)
    return exc.value.errors


def _line(path: Path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)


def test_https_listener_defaults(tmp_path: Path) -> None:
    ls = load(_write(tmp_path, ""), check_files=False).config.listeners[0]
    assert ls.protocol is Protocol.HTTPS and ls.http == HttpOptions()
    assert ls.http.mode is HttpMode.HTTP and ls.http.card_required_paths == ("/",)


def test_http_section_mapped(tmp_path: Path) -> None:
    ls = load(_write(tmp_path, """\
    http:
      mode: http
      headers: [rfc9440, card]
      card_headers: {idnat_ps: X-Card-Id}
      strip: [X-Legacy-User, "X-Corp-*"]
      card_required_paths: [/msg, /cps/]
      max_request_line: 4096
      max_header_bytes: 16384
      response_timeout: 5
      pool: {max_idle: 2, idle_timeout: 10}
"""), check_files=False).config.listeners[0]
    assert ls.http is not None
    assert ls.http.headers == (HeaderProfile.RFC9440, HeaderProfile.CARD)
    assert dict(ls.http.card_headers) == {**DEFAULT_CARD_HEADERS, "idnat_ps": "X-Card-Id"}
    assert ls.http.strip == ("X-Legacy-User", "X-Corp-*")
    assert ls.http.card_required_paths == ("/msg", "/cps/")
    assert (ls.http.max_request_line, ls.http.max_header_bytes, ls.http.response_timeout) == (4096, 16384, 5.0)
    assert (ls.http.pool_max_idle, ls.http.pool_idle_timeout) == (2, 10.0)


def test_mode_tcp(tmp_path: Path) -> None:
    ls = load(_write(tmp_path, "    http: {mode: tcp}\n"), check_files=False).config.listeners[0]
    assert ls.http is not None and ls.http.mode is HttpMode.TCP


@pytest.mark.parametrize(("extra", "needle", "key", "message"), [
    ("    http: {mode: h2}\n", "mode: h2", "listeners[0].http.mode", "invalid value 'h2'"),
    ("    http:\n      headers: [nginx, apache]\n", "headers:", "listeners[0].http.headers[1]",
     "unknown header profile 'apache'"),
    ("    http:\n      card_headers: {idnat: X}\n", "card_headers", "listeners[0].http.card_headers.idnat",
     "unknown card field"),
    ("    http:\n      card_headers: {idnat_ps: \"X Bad\"}\n", "card_headers",
     "listeners[0].http.card_headers.idnat_ps", "expected a header name"),
    ("    http:\n      card_required_paths: [msg]\n", "card_required_paths", "listeners[0].http.card_required_paths[0]",
     "starting with /"),
    ("    http:\n      max_request_line: 10\n", "max_request_line", "listeners[0].http.max_request_line",
     "out of range"),
    ("    http:\n      pool: {max_idle: 2, size: 3}\n", "pool:", "listeners[0].http.pool.size", "unknown key"),
    ("    http:\n      bogus: 1\n", "bogus", "listeners[0].http.bogus", "unknown key 'bogus'"),
])
def test_errors_are_located(tmp_path: Path, extra: str, needle: str, key: str, message: str) -> None:
    path = _write(tmp_path, extra)
    errors = _errors(path)
    assert len(errors) == 1, errors
    err = errors[0]
    assert err.file == str(path) and err.key == key and message in err.message, err
    assert err.line == _line(path, needle)


def test_http_section_only_on_https(tmp_path: Path) -> None:
    path = tmp_path / "sniproxy.yaml"
    path.write_text(HEAD.replace("protocol: https", "protocol: imaps") + "    http: {mode: http}\n")
    errors = _errors(path)
    assert [(e.key, e.line) for e in errors] == [("listeners[0].http", _line(path, "http:"))]
    assert "protocol https" in errors[0].message


def test_proxy_v2_identity_only_in_mode_tcp(tmp_path: Path) -> None:
    text = HEAD.replace('backend: "127.0.0.1:8080"', 'backend: {address: "127.0.0.1:8080", identity: proxy-v2}')
    path = tmp_path / "sniproxy.yaml"
    path.write_text(text)
    errors = _errors(path)
    assert [(e.key, e.line) for e in errors] == [("listeners[0].backend", _line(path, "backend:"))]
    path.write_text(text + "    http: {mode: tcp}\n")
    assert load(path, check_files=False).config.listeners[0].backend.address.port == 8080
