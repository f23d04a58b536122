"""sniproxy.admin routes and server, with a small fake Control (the supervisor's is tested in integration)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from dataclasses import dataclass, field

import pytest

from sniproxy.admin import AdminApp, start
from sniproxy.admin.http import Request
from sniproxy.admin.routes import handle, not_ready_reasons
from sniproxy.config.model import Address, AdminSettings


@dataclass(frozen=True)
class Result:
    ok: bool
    generation: int
    errors: tuple[str, ...]


@dataclass
class FakeControl:
    generation: int = 1
    draining: bool = False
    ready: bool = True
    next_ok: bool = True
    calls: list[str] = field(default_factory=list)

    def workers_ready(self) -> bool:
        return self.ready

    async def reload(self) -> Result:
        self.calls.append("reload")
        await asyncio.sleep(0.01)
        if not self.next_ok:
            return Result(False, self.generation, ("conf.yaml:3: flows.x.key: key does not match",))
        self.generation += 1
        return Result(True, self.generation, ())

    def drain(self) -> None:
        self.calls.append("drain")
        self.draining = True


def req(method: str, path: str) -> Request:
    return Request(method, path, "HTTP/1.1", ())


async def test_readiness_reasons() -> None:
    assert not_ready_reasons(AdminApp(None)) == ["config not loaded"]
    control = FakeControl()
    problems: list[str] = []
    app = AdminApp(control, crl_problems=lambda: problems)
    assert not_ready_reasons(app) == []
    control.ready = False
    problems.append("igc-sante-fort-pp: CRL of CN=AC stale since 2026-01-01T00:00:00+00:00")
    control.draining = True
    assert not_ready_reasons(app) == ["draining", "workers not ready: listeners not bound in every worker",
                                      "crl: " + problems[0]]


async def test_routes() -> None:
    control = FakeControl()
    stale: list[str] = []
    app = AdminApp(control, crl_problems=lambda: stale, scrape=lambda: b"# metrics\n")
    assert (await handle(app, req("GET", "/healthz"))).body == b"ok\n"
    r = await handle(app, req("GET", "/readyz"))
    assert (r.status, r.body) == (200, b"ready\n")
    stale.append("set: no CRL for CN=x")
    r = await handle(app, req("GET", "/readyz"))
    assert r.status == 503 and b"crl: set: no CRL for CN=x" in r.body
    r = await handle(app, req("GET", "/metrics"))
    assert r.status == 200 and r.body == b"# metrics\n" and r.content_type.startswith("text/plain; version=0.0.4")
    r = await handle(app, req("POST", "/reload"))
    assert r.status == 200 and json.loads(r.body) == {"ok": True, "generation": 2, "errors": []}
    control.next_ok = False
    r = await handle(app, req("POST", "/reload"))
    assert r.status == 422 and json.loads(r.body)["errors"] == ["conf.yaml:3: flows.x.key: key does not match"]
    r = await handle(app, req("GET", "/reload"))
    assert r.status == 405 and ("Allow", "POST") in r.headers and control.calls == ["reload", "reload"]
    assert (await handle(app, req("POST", "/healthz"))).status == 405
    assert (await handle(app, req("GET", "/nope"))).status == 404
    assert (await handle(app, req("POST", "/drain"))).status == 202 and control.draining
    assert (await handle(app, req("GET", "/readyz"))).status == 503
    # no live report directory: the page does not exist
    assert (await handle(app, req("GET", "/migration"))).status == 404


async def test_migration_page_uses_the_live_report(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import sys
    import types

    seen = []
    live = types.ModuleType("sniproxy.report.live")
    live.render_live = lambda d: seen.append(d) or "<html>live</html>"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sniproxy.report", types.ModuleType("sniproxy.report"))
    monkeypatch.setitem(sys.modules, "sniproxy.report.live", live)
    from pathlib import Path

    app = AdminApp(FakeControl(), live_dir=Path("/run/live"))
    r = await handle(app, req("GET", "/migration"))
    assert (r.status, r.body, r.content_type) == (200, b"<html>live</html>", "text/html; charset=utf-8")
    assert seen == [Path("/run/live")]
    assert (await handle(AdminApp(FakeControl()), req("GET", "/migration"))).status == 404   # no dump dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, method: str, path: str) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _raw(port: int, data: bytes, *, shut: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


async def test_server_over_a_real_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    import sniproxy.admin.server as server_mod

    monkeypatch.setattr(server_mod, "REQUEST_TIMEOUT", 0.5)
    control = FakeControl()
    port = _free_port()
    server = await start(AdminSettings(Address("127.0.0.1", port)), AdminApp(control))
    try:
        status, body, headers = await asyncio.to_thread(_get, port, "GET", "/healthz")
        assert (status, body, headers["connection"]) == (200, b"ok\n", "close")
        status, body, _ = await asyncio.to_thread(_get, port, "POST", "/reload")
        assert status == 200 and json.loads(body)["generation"] == 2
        status, body, _ = await asyncio.to_thread(_get, port, "HEAD", "/readyz")
        assert status == 200 and body == b""
        # a client that sends half a request and waits gets 408 when the time is up
        out = await asyncio.to_thread(_raw, port, b"GET /healthz HTTP/1.1\r\n", shut=False)
        assert out.startswith(b"HTTP/1.1 408 ")
        out = await asyncio.to_thread(_raw, port, b"BREW /pot HTCPCP/1.0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        out = await asyncio.to_thread(_raw, port, b"GET /x HTTP/1.1\r\n" + b"X: y\r\n" * 3000)
        assert out.startswith(b"HTTP/1.1 431 ")
    finally:
        await server.close()
