"""structlog set-up: JSON lines when stderr is not a terminal, readable lines on a terminal.

Every connection produces exactly one ``connection`` event at its end (see ``connection.py``);
this module only decides how events are rendered and filtered.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the whole process (idempotent)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger carrying ``logger_name=name``, resolved lazily so ``configure`` applies later."""
    # get_logger().bind() would resolve the proxy at import time, before configure() runs.
    return structlog.get_logger(**{"logger_name": name})
