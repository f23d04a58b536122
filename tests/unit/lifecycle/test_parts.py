"""Pure and local parts of the lifecycle: IDLE detection, the pid-file lock, the control channel's
framing and reply matching, bind error wording."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from sniproxy.config.model import Address, Backend, Config, Listener, Profile, Protocol
from sniproxy.driver.mail import is_idle_command as _is_idle_command
from sniproxy.lifecycle.build import bind_error
from sniproxy.lifecycle.channel import Channel
from sniproxy.lifecycle.pidfile import AlreadyRunning, PidFile, read_pid, runtime_dir


@pytest.mark.parametrize(("data", "idle"), [
    (b"a1 IDLE\r\n", True),
    (b"A0042 idle\r\n", True),
    (b"DONE\r\n", False),
    (b"a1 IDLE", False),                                # not a whole line yet
    (b"a1 NOOP\r\na2 IDLE\r\n", False),                 # pipelined: not the one-line IDLE clients send
    (b"a1 SEARCH SUBJECT IDLE\r\n", True),              # the cost of not parsing: BYE at drain, harmless
    (b"x" * 100 + b" IDLE\r\n", False),
])
def test_idle_command_detection(data: bytes, idle: bool) -> None:
    assert _is_idle_command(data) is idle


def test_pid_file_lock_names_the_holder(tmp_path: Path) -> None:
    first = PidFile(tmp_path / "run")
    first.acquire()
    try:
        assert read_pid(first.path) is not None
        with pytest.raises(AlreadyRunning) as info:
            PidFile(tmp_path / "run").acquire()
        assert info.value.pid == read_pid(first.path)
        assert f"pid {info.value.pid}" in str(info.value) and str(first.path) in str(info.value)
    finally:
        first.release()
    assert not first.path.exists()
    again = PidFile(tmp_path / "run")      # released: the next start takes it
    again.acquire()
    again.release()


def _config(tmp_path: Path, state_dir: Path | None) -> Config:
    ls = Listener(name="imap", binds=(Address("127.0.0.1", 143), Address("::1", 143)), protocol=Protocol.IMAP,
                  backend=Backend(Address("127.0.0.1", 10143)), bind_lines=(12, 13))
    return Config(source=tmp_path / "a.yaml", profile=Profile.PRODUCTION, authorities={}, flows={},
                  listeners=(ls,), state_dir=state_dir)


def test_runtime_dir_is_state_dir_else_per_config(tmp_path: Path) -> None:
    assert runtime_dir(_config(tmp_path, tmp_path / "state")) == tmp_path / "state"
    a = runtime_dir(_config(tmp_path, None))
    b = runtime_dir(replace(_config(tmp_path, None), source=tmp_path / "b.yaml"))
    assert a != b and a.parent == b.parent


def test_bind_error_names_address_listener_and_line(tmp_path: Path) -> None:
    cfg = _config(tmp_path, None)
    err = OSError(98, "Address already in use")
    assert bind_error(cfg, Address("::1", 143), err) == (
        f"{tmp_path / 'a.yaml'}:13: listeners[0].bind[1]: cannot listen on [::1]:143 (listener imap): "
        "Address already in use")


async def test_channel_matches_replies_and_reads_other_messages() -> None:
    a, b = socket.socketpair()
    left, right = await Channel.open(a), await Channel.open(b)
    try:
        async def serve() -> None:
            while (msg := await right.read()) is not None:
                if msg["op"] == "load":
                    right.send({"op": "note", "text": "before the reply"})
                    right.send({"reply_to": msg["id"], "ok": True, "echo": msg["x"]})
        notes: list[dict[str, object]] = []

        async def collect() -> None:    # the reader loop the supervisor runs: replies go to request()
            while (msg := await left.read()) is not None:
                notes.append(msg)
        loop = asyncio.get_running_loop()
        server, reader = loop.create_task(serve()), loop.create_task(collect())
        reply = await left.request({"op": "load", "x": "é" * 100_000}, 5)
        assert reply["ok"] is True and reply["echo"] == "é" * 100_000
        assert notes == [{"op": "note", "text": "before the reply"}]
        right.close()
        with pytest.raises(ConnectionError):             # the peer went away: no reply will come
            await left.request({"op": "load", "x": 1}, 5)
        await asyncio.wait_for(reader, 5)
        with pytest.raises(ConnectionError):             # and later requests fail at once, not after 5 s
            await left.request({"op": "load", "x": 2}, 5)
        server.cancel()
    finally:
        left.close()
        right.close()


def test_reload_command_without_a_running_instance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sniproxy import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""profile: production
state_dir: {tmp_path / 'state'}
flows:
  f: {{certificate: c.pem, key: k.pem, client_auth: none}}
listeners:
  - {{name: t, bind: "127.0.0.1:1", protocol: tls, backend: "127.0.0.1:2", flow: f}}
""")
    assert cli.main(["reload", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"no running sniproxy for {cfg} (no pid file {tmp_path / 'state' / 'sniproxy.pid'})" in err, err
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "sniproxy.pid").write_text("999999999\n")     # stale: that process is gone
    assert cli.main(["reload", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "pid 999999999" in err and "is not running" in err, err


def test_pid_alive_tells_a_live_process_from_a_reaped_one() -> None:
    import subprocess

    from sniproxy.lifecycle.pidfile import pid_alive

    assert pid_alive(os.getpid())
    child = subprocess.Popen(["true"])
    child.wait()   # reaped: its pid no longer exists (until reused, which a test this short does not meet)
    assert not pid_alive(child.pid)
