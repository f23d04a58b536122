"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No port, no websocket library: Chromium reads commands on fd 3 and writes answers on fd 4, each a JSON
message ended by a NUL byte. Every wait is bounded. Used by the report page tests to load a page, read
its console and network log, evaluate expressions and take a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--remote-debugging-pipe",
         # Chromium's own background services still call home with the flags above (seen: network time,
         # component updater, account sign-in); these quiet what they can, the caller's proxy trap sees the rest.
         "--no-pings", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
         "--disable-breakpad", "--no-default-browser-check", "--metrics-recording-only",
         "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter,"
         "AutofillServerCommunication,CertificateTransparencyComponentUpdater,SigninInterceptBubbleV2")


class BrowserError(RuntimeError):
    """Chromium died, answered an error, or did not answer in time."""


class Chromium:
    """One headless Chromium process; ``page(url)`` loads a URL in a new tab and reports what happened."""

    def __init__(self, binary: str, user_data_dir: Path, *, extra: tuple[str, ...] = (),
                 timeout: float = 30.0) -> None:
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # bash (dash takes single-digit fds only) puts our pipe ends on fds 3 and 4, where --remote-debugging-pipe
        # expects them.
        argv = ["/bin/bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}', binary, *FLAGS,
                f"--user-data-dir={user_data_dir}", *extra, "about:blank"]
        self.proc = subprocess.Popen(argv, pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from Chromium in time")
            ready, _, _ = select.select([self._out_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed its pipe (exit {self.proc.poll()})")
            self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Run one command and return its result; events read meanwhile go to ``events``."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self.events.append(answer)

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> dict[str, Any]:
        """The first event ``method`` of ``session`` (already received or coming)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self.events)
            msg = self._read_message(deadline)
            if "method" in msg:
                self.events.append(msg)

    # ------------------------------------------------------------------ a page
    def page(self, url: str, *, width: int = 1366, height: int = 900) -> Page:
        """Open ``url`` in a new tab at a laptop's size and wait for its load event."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired", session)
        return Page(self, session)

    def close(self) -> None:
        """Ask Chromium to quit, then make sure it did (bounded)."""
        try:
            if self.proc.poll() is None:
                self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.stderr is not None:
            self.proc.stderr.close()   # else a ResourceWarning (an error in this suite) when collected


class Page:
    """A loaded tab: its events, ``evaluate`` and ``screenshot``."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.browser.events
                if e["method"] == method and e.get("sessionId") == self.session]

    def requests(self) -> list[str]:
        """Every URL the page asked for (the document included)."""
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads included)."""
        out = [json.dumps(e.get("args")) for e in self._events("Runtime.consoleAPICalled")
               if e.get("type") in ("error", "assert")]
        out += [json.dumps(e.get("exceptionDetails")) for e in self._events("Runtime.exceptionThrown")]
        out += [e["entry"].get("text", "") for e in self._events("Log.entryAdded")
                if e["entry"].get("level") == "error"]
        out += [f"failed: {e.get('errorText')}" for e in self._events("Network.loadingFailed")]
        return out

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        r = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        if "exceptionDetails" in r:
            raise BrowserError(f"evaluate: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, dest: Path, max_height: int = 1800) -> Path:
        """A PNG of the page from its top, beyond the viewport, at most ``max_height`` CSS pixels tall."""
        size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
        r = self.browser.send("Page.captureScreenshot",
                              {"format": "png", "clip": clip, "captureBeyondViewport": True}, self.session)
        dest.write_bytes(base64.b64decode(r["data"]))
        return dest
