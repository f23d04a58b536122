"""Start the SOAP echo backend (``tests.integration.httpbackend``) as a child process on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


class HttpBackend:
    """A running SOAP echo service: ``port``, ``requests()`` (every head it received), ``stop()``."""

    def __init__(self, log: Path, module: str = "tests.integration.httpbackend", args: tuple[str, ...] = ()) -> None:
        self.log = log
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--port",
                                      str(self.port), "--log", str(log), *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self._close_pipes()
                raise RuntimeError(f"backend exited: {err}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("backend did not start")

    def requests(self) -> list[dict[str, Any]]:
        """Every request head received so far, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def paths(self) -> list[str]:
        """The paths of every request received so far."""
        return [r["path"] for r in self.requests()]

    def stop(self) -> None:
        """Terminate the child (bounded wait)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        # Closed by us once the child is gone: left to the collector they are a ResourceWarning (an error here).
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
