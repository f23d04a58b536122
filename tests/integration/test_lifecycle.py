"""Process lifecycle with real peers: signals, hot reload, no orphans (issue 13).

The proxy is the real ``sniproxy run`` (supervisor + spawned workers); clients are imaplib and
``openssl s_client``; the backend is the private Dovecot.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sniproxy.demo.pki import TestPki
from tests.integration.clients import imap_starttls
from tests.integration.lifecycle_kit import (
    IMAP_2BIS,
    IMAP_SANTE,
    alive,
    kill_quietly,
    lifecycle_config,
    reload_and_wait,
    rewrite,
    served_cn,
    wait_until,
    with_flow_cert,
    worker_pids,
)
from tests.integration.peers import Dovecot
from tests.integration.proxyproc import ProxyProcess

pytestmark = pytest.mark.integration
StartProxy = Callable[[dict[str, Any]], ProxyProcess]


def test_reload_swaps_certificate_keeps_open_imap_session(pki: TestPki, dovecot: Dovecot,
                                                          start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imap is not None
    assert served_cn(pki, ports.imap) == IMAP_2BIS
    # A session on flow 2bis (no SNI), logged in, before the reload.
    m = imap_starttls(ports.imap, pki, "fort", None)
    try:
        m.login("alice@example.test", "alicepw")
        assert m.append("INBOX", None, None, b"Subject: reload\r\n\r\nbody across a reload\r\n")[0] == "OK"
        # The reload moves flow 2bis to the IGC Sante certificate (the mono-flux cutover).
        rewrite(proxy, with_flow_cert(cfg, pki, "2bis", "igcsante"))
        ev = reload_and_wait(proxy)
        assert ev["generation"] == 2
        assert served_cn(pki, ports.imap) == IMAP_SANTE          # new connections: new certificate
        assert served_cn(pki, ports.imap) == IMAP_SANTE          # ... from whichever worker accepts
        # The open session still works on its pinned snapshot.
        assert m.noop()[0] == "OK"
        typ, data = m.select("INBOX")
        assert typ == "OK" and int(data[0] or b"0") >= 1
        typ, fetched = m.fetch(data[0].decode(), "(BODY[TEXT])")
        assert typ == "OK" and b"body across a reload" in b"".join(
            p if isinstance(p, bytes) else b"".join(x for x in p if isinstance(x, bytes)) for p in fetched)
        m.logout()
    finally:
        if m.state != "LOGOUT":
            m.shutdown()
    # An invalid config (2BIS certificate with the IGC Sante key) is refused, the new one keeps serving.
    bad = with_flow_cert(cfg, pki, "2bis", "igcsante")
    bad["flows"]["2bis"]["key"] = str(pki.servers["2bis"].key)
    rewrite(proxy, bad)
    ev = reload_and_wait(proxy, "reload_failed")
    assert ev["generation"] == 2
    assert any(str(proxy.config) in e and "flows.2bis.key" in e for e in ev["errors"]), ev["errors"]
    assert served_cn(pki, ports.imap) == IMAP_SANTE
    # `sniproxy reload` finds the instance by its pid file and prints the same refusal.
    r = subprocess.run([sys.executable, "-m", "sniproxy", "reload", "-c", str(proxy.config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "flows.2bis.key" in r.stderr and f"{proxy.config}:" in r.stderr
    # ... and the accepted one (back to the 2BIS certificate) with its generation.
    rewrite(proxy, cfg)
    r = subprocess.run([sys.executable, "-m", "sniproxy", "reload", "-c", str(proxy.config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "generation 3" in r.stdout, (r.stdout, r.stderr)
    assert served_cn(pki, ports.imap) == IMAP_2BIS


def test_reload_adds_and_removes_listeners(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    imaps = [ls for ls in cfg["listeners"] if ls["name"] == "imaps"]
    cfg["listeners"] = [ls for ls in cfg["listeners"] if ls["name"] == "imap"]
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imap is not None and ports.imaps is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports.imaps), timeout=5).close()
    cfg2 = dict(cfg, listeners=imaps)        # imap removed, imaps added
    m = imap_starttls(ports.imap, pki, "fort", None)   # open on the listener about to go
    try:
        m.login("alice@example.test", "alicepw")
        rewrite(proxy, cfg2)
        assert reload_and_wait(proxy)["generation"] == 2
        assert served_cn(pki, ports.imaps, starttls=None) == IMAP_2BIS
        # The removed listener's session drains by itself: it still works, new ones are refused.
        assert m.noop()[0] == "OK"
        m.logout()
    finally:
        if m.state != "LOGOUT":
            m.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports.imap), timeout=5).close()


def test_sigterm_exits_0_and_leaves_no_worker(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, _ = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    pids = worker_pids(proxy, 2)
    try:
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=30) == 0, proxy.log_text()[-3000:]
        wait_until(lambda: not any(alive(p) for p in pids), 5, "workers to exit")
    finally:
        kill_quietly(pids)


def test_workers_exit_when_supervisor_is_killed(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, _ = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    pids = worker_pids(proxy, 2)
    try:
        proxy.proc.send_signal(signal.SIGKILL)     # no handler, no forwarding: only PDEATHSIG can tell them
        proxy.proc.wait(timeout=10)
        wait_until(lambda: not any(alive(p) for p in pids), 10, "orphaned workers to exit")
    finally:
        kill_quietly(pids)


def test_workers_1_survives_sighup(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=1)
    proxy = start_proxy(cfg)
    worker_pids(proxy, 1)
    assert reload_and_wait(proxy)["generation"] == 2
    assert proxy.proc.poll() is None
    assert ports.imap is not None and served_cn(pki, ports.imap) == IMAP_2BIS


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_pid_1_handles_sighup_and_sigterm(pki: TestPki, dovecot: Dovecot, tmp_path: Any) -> None:
    """As PID 1 of a PID namespace (a container) the kernel drops signals without a handler."""
    from sniproxy.demo.conf import write_config
    from tests.conftest import fail_or_skip

    if os.geteuid() != 0:
        fail_or_skip("a PID namespace needs root (unshare --pid)")
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=1)
    path = write_config(cfg, tmp_path / "pid1.yaml")
    # --mount-proc: the namespace's own /proc, as a container has (PID 1 finds its adopted zombies there).
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-m",
                              "sniproxy", "run", "-c", str(path)], stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines: list[str] = []
        assert outer.stderr is not None
        deadline = time.monotonic() + 30
        while not any('"serving"' in ln for ln in lines) and time.monotonic() < deadline:
            lines.append(outer.stderr.readline())
        assert any('"serving"' in ln for ln in lines), "".join(lines)
        assert any('"pid": 1,' in ln for ln in lines if '"supervisor"' in ln), "".join(lines)
        children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
        inner = int(children[0])            # the supervisor, PID 1 inside its namespace
        os.kill(inner, signal.SIGHUP)
        while time.monotonic() < deadline + 20:
            line = outer.stderr.readline()
            lines.append(line)
            if '"event": "reload"' in line:
                break
        assert any('"event": "reload"' in ln for ln in lines), "".join(lines[-20:])
        assert ports.imap is not None and served_cn(pki, ports.imap) == IMAP_2BIS
        # An orphan of the namespace (its parent exits at once) is adopted by PID 1, which must reap it.
        subprocess.run(["nsenter", "--target", str(inner), "--pid", "--", "sh", "-c", "sleep 4.2718 & exit 0"],
                       check=True, timeout=10)
        # the shell's child may not have exec'd sleep yet when nsenter returns (a loaded machine): look again
        orphans: list[str] = []
        wait_until(lambda: bool(orphans.extend(p for p in os.listdir("/proc")
                                               if p.isdigit() and _cmdline(p) == "sleep\x004.2718\x00") or orphans),
                   3, "the orphan sleep in /proc")
        # A zombie stays in /proc until its parent reaps it.
        wait_until(lambda: not any(os.path.exists(f"/proc/{p}") for p in orphans), 10, "PID 1 to reap the orphan")
        os.kill(inner, signal.SIGTERM)
        assert outer.wait(timeout=30) == 0
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(timeout=5)
        outer.stderr.close()   # type: ignore[union-attr]  # PIPE: never None


def _bind_line(path: Any, port: int) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if f"127.0.0.1:{port}" in text)


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_names_address_listener_and_config_line(pki: TestPki, dovecot: Dovecot, tmp_path: Any,
                                                            workers: int) -> None:
    from sniproxy.demo.conf import write_config

    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=workers)
    assert ports.imaps is not None
    path = write_config(cfg, tmp_path / "busy.yaml")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.imaps))
        blocker.listen()
        r = subprocess.run([sys.executable, "-m", "sniproxy", "run", "-c", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    want = (f"{path}:{_bind_line(path, ports.imaps)}: listeners[1].bind: cannot listen on "
            f"127.0.0.1:{ports.imaps} (listener imaps): Address already in use")
    assert want in r.stderr, r.stderr


def test_second_instance_is_refused(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy, tmp_path: Any) -> None:
    from sniproxy.demo.conf import write_config

    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    # The same config: the pid file lock names the running instance.
    r = subprocess.run([sys.executable, "-m", "sniproxy", "run", "-c", str(proxy.config)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "already_running" in r.stderr and f"pid {proxy.proc.pid}" in r.stderr, r.stderr
    # Another config file on the same ports (SO_REUSEPORT would let it share them): the bind probe.
    other = write_config(cfg, tmp_path / "other.yaml")
    r = subprocess.run([sys.executable, "-m", "sniproxy", "run", "-c", str(other)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{ports.imap} (listener imap)" in r.stderr, r.stderr
    assert ports.imap is not None and served_cn(pki, ports.imap) == IMAP_2BIS   # the first one still serves


def test_reload_onto_a_busy_port_is_refused_naming_it(pki: TestPki, dovecot: Dovecot,
                                                      start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    imaps = [ls for ls in cfg["listeners"] if ls["name"] == "imaps"]
    cfg["listeners"] = [ls for ls in cfg["listeners"] if ls["name"] == "imap"]
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imaps is not None and ports.imap is not None
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.imaps))
        blocker.listen()
        rewrite(proxy, dict(cfg, listeners=cfg["listeners"] + imaps))
        ev = reload_and_wait(proxy, "reload_failed")
    line = _bind_line(proxy.config, ports.imaps)
    assert any(e.startswith(f"{proxy.config}:{line}: listeners[1].bind: cannot listen on 127.0.0.1:{ports.imaps} "
                            "(listener imaps)") for e in ev["errors"]), ev["errors"]
    assert ev["generation"] == 1 and served_cn(pki, ports.imap) == IMAP_2BIS


def test_dead_worker_is_replaced_on_the_config_in_force(pki: TestPki, dovecot: Dovecot,
                                                        start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    pids = worker_pids(proxy, 2)
    rewrite(proxy, with_flow_cert(cfg, pki, "2bis", "igcsante"))
    assert reload_and_wait(proxy)["generation"] == 2
    os.kill(pids[0], signal.SIGKILL)
    died = proxy.wait_log("worker_died")
    assert died["pid"] == pids[0]
    new = proxy.wait_log("ready", lambda e: e["pid"] not in pids, timeout=20)
    assert new["generation"] == 2
    assert ports.imaps is not None
    assert [served_cn(pki, ports.imaps, starttls=None) for _ in range(4)] == [IMAP_SANTE] * 4


def test_reload_watch_reloads_changed_files_once(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    cfg["reload"] = {"watch": True, "interval": "0.3s"}
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imaps is not None
    rewrite(proxy, with_flow_cert(cfg, pki, "2bis", "igcsante"))          # no signal: the watcher sees it
    ev = proxy.wait_log("reload", timeout=15)
    assert ev["generation"] == 2 and proxy.wait_log("config_changed")
    assert served_cn(pki, ports.imaps, starttls=None) == IMAP_SANTE
    bad = with_flow_cert(cfg, pki, "2bis", "igcsante")
    bad["flows"]["2bis"]["key"] = str(pki.servers["2bis"].key)
    rewrite(proxy, bad)
    proxy.wait_log("reload_failed", timeout=15)
    time.sleep(1.5)                                                      # several more polls
    assert len([e for e in list(proxy.events) if e.get("event") == "reload_failed"]) == 1
    assert served_cn(pki, ports.imaps, starttls=None) == IMAP_SANTE


def test_reload_rebinds_a_listener_to_a_new_port(pki: TestPki, dovecot: Dovecot, start_proxy: StartProxy) -> None:
    import imaplib

    from tests.conftest import free_port
    from tests.integration.clients import client_context

    cfg, ports = lifecycle_config(pki, dovecot.imap_port, workers=2)
    proxy = start_proxy(cfg)
    worker_pids(proxy, 2)
    assert ports.imaps is not None
    old = imaplib.IMAP4_SSL("127.0.0.1", ports.imaps, ssl_context=client_context(pki, "fort"), timeout=15)
    try:
        old.login("alice@example.test", "alicepw")
        moved = free_port()
        cfg2 = {**cfg, "listeners": [dict(ls, bind=f"127.0.0.1:{moved}") if ls["name"] == "imaps" else ls
                                     for ls in cfg["listeners"]]}
        rewrite(proxy, cfg2)
        assert reload_and_wait(proxy)["generation"] == 2
        assert served_cn(pki, moved, starttls=None) == IMAP_2BIS         # the new address serves
        with pytest.raises(ConnectionRefusedError):                      # the old one takes no one new
            socket.create_connection(("127.0.0.1", ports.imaps), timeout=5).close()
        assert old.noop()[0] == "OK"                                     # ... and its session carries on
        old.logout()
    finally:
        if old.state != "LOGOUT":
            old.shutdown()
