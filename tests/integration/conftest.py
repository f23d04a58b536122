"""Fixtures starting real peers (private Dovecot and Postfix) for the integration tests.

A peer that cannot start fails the test under ``CI=true`` and skips it otherwise (see ``fail_or_skip``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki, build
from tests.conftest import fail_or_skip
from tests.integration.httppeers import HttpBackend
from tests.integration.peers import Dovecot, PeerStartError, Postfix, start_dovecot, start_postfix
from tests.integration.proxyproc import ProxyProcess


def require_binary(name: str) -> str:
    """Path of executable ``name``; fails under ``CI=true``, skips otherwise, when it is not installed."""
    path = shutil.which(name)
    if path is None:
        fail_or_skip(f"{name!r} not found in PATH: run scripts/install-test-deps.sh")
    return path


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        fail_or_skip(f"a private {what} needs root (it switches to its service users)")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot 2.3 for the whole session.

    Attributes: ``host``, ``imap_port``, ``imap_haproxy_port`` (PROXY v1/v2 required, trusted from
    127.0.0.0/8 and ::1), ``lmtp_port``, ``log_path``, ``read_log()``, ``wait_for_log(needle)``, ``users``,
    ``master_users``, ``master_separator``, ``add_user()``, ``add_master_user()``, ``stop()``.
    Shared by every test: add users with new names rather than changing existing ones.
    """
    yield from private_dovecot()


def private_dovecot(**options: Any) -> Iterator[Dovecot]:
    """Start a private Dovecot (``start_dovecot`` options), yield it, stop it: the body of Dovecot fixtures."""
    require_binary("dovecot")
    require_binary("doveadm")
    _require_root("Dovecot")
    try:
        d = start_dovecot(**options)
    except PeerStartError as e:
        fail_or_skip(f"private Dovecot did not start: {e}")
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def postfix(dovecot: Dovecot) -> Iterator[Postfix]:
    """A private Postfix 3.7 smtpd for the whole session, delivering ``@example.test`` to ``dovecot`` by LMTP.

    Attributes: ``host``, ``smtp_port``, ``lmtp_port``, ``config_dir``, ``log_path``, ``read_log()``,
    ``wait_for_log(needle)``, ``postconf(**settings)`` (then reload), ``stop()``. XCLIENT is allowed from
    127.0.0.0/8.
    """
    require_binary("postfix")
    require_binary("postconf")
    _require_root("Postfix")
    try:
        p = start_postfix(dovecot.lmtp_port)
    except PeerStartError as e:
        fail_or_skip(f"private Postfix did not start: {e}")
    try:
        yield p
    finally:
        p.stop()


# ---------------------------------------------------------------------------- sniproxy under test


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """The look-alike IGC CPS / IGC Santé PKI, generated once per session."""
    return build(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], ProxyProcess]]:
    """Start ``sniproxy run`` on a config dict; every proxy started is stopped at teardown."""
    from sniproxy.demo.conf import write_config

    started: list[ProxyProcess] = []

    def start(cfg: dict[str, Any]) -> ProxyProcess:
        path = write_config(cfg, tmp_path / f"sniproxy-{len(started)}.yaml")
        waits = []
        for ls in cfg["listeners"]:
            host, _, port = ls["bind"].rpartition(":")
            waits.append((host.strip("[]"), int(port)))
        proc = ProxyProcess(path, wait_ports=waits)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def http_backend(tmp_path: Path) -> Iterator[HttpBackend]:
    """A SOAP echo HTTP backend of this test's own (tests/integration/httpbackend.py), stopped after it."""
    try:
        b = HttpBackend(tmp_path / "requests.jsonl")
    except RuntimeError as exc:
        fail_or_skip(f"HTTP backend did not start: {exc}")
    yield b
    b.stop()
