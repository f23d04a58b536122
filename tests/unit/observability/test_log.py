"""Every log event names the process that wrote it: workers share one log (soak, issue 17)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from sniproxy.observability.log import configure, get_logger


def test_every_event_carries_the_pid_of_its_process(capfd: pytest.CaptureFixture[str]) -> None:
    configure("info", "json")
    get_logger("t").info("crl_updated", url="http://x/")
    get_logger("t").info("ready", pid=1)            # an explicit pid field is kept as given
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    assert lines[0]["event"] == "crl_updated" and lines[0]["pid"] == os.getpid()
    assert lines[1]["pid"] == 1


def test_a_forked_child_logs_its_own_pid() -> None:
    configure("info", "json")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        sys.stderr = open(w, "w", closefd=False)   # the logger writes to stderr's descriptor
        get_logger("t").info("child")
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as fh:
        ev = json.loads(fh.readline())
    assert ev["pid"] == pid
