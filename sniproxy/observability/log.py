"""structlog set-up: JSON lines when stderr is not a terminal, readable lines on a terminal.

Every connection produces exactly one ``connection`` event at its end (see ``connection.py``);
this module only decides how events are rendered and filtered.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog


class LineLogger:
    """Writes each rendered event as one ``write(2)`` of a whole line.

    Worker processes share the supervisor's stderr; a single write per line keeps lines from
    interleaving (writes up to PIPE_BUF bytes to a pipe are atomic, POSIX).
    """

    def __init__(self, fd: int = 2) -> None:
        self._fd = fd

    def msg(self, message: str) -> None:
        """Write one line."""
        data = (message + "\n").encode("utf-8", "replace")
        while data:
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                continue
            except OSError:
                return  # stderr gone: logging must never take the proxy down
            data = data[n:]

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _line_logger_factory(*_args: Any) -> LineLogger:
    return LineLogger(sys.stderr.fileno())


_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def _add_pid(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Workers share one log: which process wrote an event (a CRL installed, a connection) must show.
    event.setdefault("pid", _pid)
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the whole process (idempotent)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _add_pid,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_line_logger_factory,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger carrying ``logger_name=name``, resolved lazily so ``configure`` applies later."""
    # get_logger().bind() would resolve the proxy at import time, before configure() runs.
    return structlog.get_logger(**{"logger_name": name})
