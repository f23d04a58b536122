"""Issue 15: the report page (``--format html`` file, and the live page from ``render_live``) in headless Chromium.

The page must load with no console error, ask for nothing but itself (Chromium's proxy points at a trap
that records any request to another host), and show the three SVG charts with the expected series.
Set ``UPDATE_DOCS_SCREENSHOT=1`` to copy the HTML file's screenshot to docs/img/migration-report.png.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sniproxy.report import synth
from sniproxy.report.live import LiveRecorder, render_live
from tests.integration.browser import Chromium
from tests.integration.conftest import require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHARTS_JS = ("JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => ({id: s.id, "
             "width: s.getBoundingClientRect().width, "
             "series: [...s.querySelectorAll('g.series')].map(g => g.dataset.series), "
             "marks: s.querySelectorAll('g.series rect, g.series circle').length})))")
EXPECTED = {
    "chart-flows": ["2bis", "igcsante"],
    "chart-nosni": ["no-SNI share"],
    "chart-pki": ["IGC CPS 2TER", "IGC Santé Fort", "IGC Santé Standard"],
}


BROWSER_SERVICE_HOSTS = frozenset({"update.googleapis.com", "accounts.google.com", "clients2.google.com"})


def _host(request_line: bytes) -> str:
    """The host of a proxy request line: ``CONNECT h:443 HTTP/1.1`` or ``GET http://h/path HTTP/1.1``."""
    parts = request_line.decode(errors="replace").split()
    target = parts[1] if len(parts) > 1 else ""
    return (urlsplit(target).hostname if "://" in target else target.rpartition(":")[0]) or target


class _Trap:
    """A TCP listener used as Chromium's proxy: any request to a host other than loopback lands here."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(4096).split(b"\r\n")[0])
                except OSError:
                    self.seen.append(b"(no request line)")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[Chromium, _Trap]]:
    binary = require_binary("chromium")
    trap = _Trap()
    profile = tmp_path / "profile"
    profile.mkdir()
    chromium = Chromium(binary, profile, extra=(f"--proxy-server=http://127.0.0.1:{trap.port}",))
    try:
        yield chromium, trap
    finally:
        chromium.close()
        trap.close()


def _check_page(chromium: Chromium, trap: _Trap, url: str, shot: Path) -> dict[str, Any]:
    page = chromium.page(url)
    charts = {c["id"]: c for c in json.loads(page.evaluate(CHARTS_JS))}
    assert {k: v["series"] for k, v in charts.items()} == EXPECTED
    for c in charts.values():
        assert c["width"] > 300 and c["marks"] > 0, c     # drawn at a readable size, with data in it
    assert page.evaluate("document.querySelector('#blockers tbody tr') !== null")
    page.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    origin = urlsplit(url)
    for req in page.requests():
        parts = urlsplit(req)
        assert parts.scheme in ("file", "data") or (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), req
    assert page.requests()[0] == url
    assert page.errors() == []
    # The proxy trap sees every request Chromium makes to a non-loopback host, its own included: the
    # component updater and account sign-in call home whatever the flags. Those hosts are the browser's,
    # never the page's (the page's own requests are all in the DevTools log above); anything else fails.
    strays = [line for line in trap.seen if _host(line) not in BROWSER_SERVICE_HOSTS]
    assert strays == [], trap.seen
    return charts


def _synth_log(dest: Path, count: int = 20_000) -> Path:
    dest.write_text("\n".join(synth.lines(count, days=45, holders=600)) + "\n", encoding="utf-8")
    return dest


def test_html_file_in_chromium(browser: tuple[Chromium, _Trap], tmp_path: Path) -> None:
    log = _synth_log(tmp_path / "proxy.log")
    out = tmp_path / "migration-report.html"
    r = subprocess.run([sys.executable, "-m", "sniproxy", "report", str(log), "--format", "html", "--out", str(out),
                        "--since", "2026-10-15", "--cutover-date", "2027-01-15"],
                       capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode()
    chromium, trap = browser
    shot = tmp_path / "migration-report.png"
    _check_page(chromium, trap, out.as_uri(), shot)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        dest = REPO / "docs" / "img" / "migration-report.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


def test_live_page_in_chromium(browser: tuple[Chromium, _Trap], tmp_path: Path) -> None:
    dump_dir = tmp_path / "live"
    events = list(synth.events(6000, days=20, holders=300))
    for name, part in (("1", events[::2]), ("2", events[1::2])):   # two workers
        rec = LiveRecorder(dump_dir)
        rec.path = dump_dir / f"live-{name}.json"
        for ev in part:
            rec.observe(ev)
        rec.flush()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/migration":
                self.send_error(404)
                return
            body = render_live(dump_dir).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        chromium, trap = browser
        url = f"http://127.0.0.1:{server.server_address[1]}/migration"
        _check_page(chromium, trap, url, tmp_path / "live.png")
        page_text = chromium.page(url).evaluate("document.body.innerText")
        assert "Live view" in page_text and "sniproxy report" in page_text
    finally:
        server.shutdown()
        server.server_close()
