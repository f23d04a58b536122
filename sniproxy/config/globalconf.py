"""The process-wide settings: ``workers``, ``log``, ``limits``, ``drain``, ``reload``, ``crl``, ``admin``.

Owns: the schema of those top-level keys (keys, types, defaults; ``docs/config.md``) and their checks.
Called by ``load``; must not read the other sections (the admin bind check is handed the listeners'
addresses) or touch sockets.
"""

from __future__ import annotations

from pathlib import Path

from sniproxy.config.fields import MISSING, Section
from sniproxy.config.model import Address, AdminSettings, CrlSettings, Limits
from sniproxy.config.names import binds_overlap, parse_address

ADMIN_KEYS = ("bind",)
LIMIT_KEYS = ("max_connections", "max_per_ip", "max_pending", "max_pending_per_ip")
CRL_TOP_KEYS = ("cache_dir", "refresh_max", "retry_min", "timeout", "max_bytes")
LOG_KEYS = ("level", "format")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def read_workers(top: Section) -> int | None:
    """``workers``: 1-1024, or ``auto`` (None: one per available CPU)."""
    value = top.raw("workers")
    if value is MISSING:
        return 1
    if value == "auto":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024:
        return value
    top.error("workers", f"expected an integer 1-1024 or \"auto\", got {value!r}")
    return 1


def read_log(top: Section) -> tuple[str, str]:
    """``log``: the level and the format."""
    sec = top.section("log")
    if sec is None:
        return "info", "auto"
    sec.check_keys(LOG_KEYS)
    return sec.choice("level", LOG_LEVELS, "info"), sec.choice("format", LOG_FORMATS, "auto")


def read_admin(top: Section, binds: list[tuple[Address, int]]) -> AdminSettings | None:
    """``admin: {bind: ADDRESS}``: the admin endpoint, refused on an address a listener binds."""
    sec = top.section("admin")
    if sec is None:
        return None
    sec.check_keys(ADMIN_KEYS)
    value = sec.string("bind", required=True)
    if not isinstance(value, str):
        return None
    try:
        addr = parse_address(value.strip())
    except ValueError as exc:
        sec.error("bind", str(exc))
        return None
    # Never on a client port: the admin routes (reload, drain) must not be reachable by clients.
    clash = next((line for other, line in binds if binds_overlap(addr, other)), None)
    if clash is not None:
        sec.error("bind", f"address {addr} is a client port: a listener binds it (line {clash})")
        return None
    return AdminSettings(bind=addr, line=sec.line("bind"))


def read_limits(top: Section) -> Limits:
    """``limits``: connection and handshake caps, overall and per client address."""
    sec = top.section("limits")
    d = Limits()
    if sec is None:
        return d
    sec.check_keys(LIMIT_KEYS)
    values = {k: sec.integer(k, getattr(d, k), minimum=1) for k in LIMIT_KEYS}
    values = {k: v if isinstance(v, int) else getattr(d, k) for k, v in values.items()}
    limits = Limits(**values)
    if limits.max_per_ip > limits.max_connections:
        sec.warn("max_per_ip", "larger than max_connections: one address can take every slot")
    if limits.max_pending_per_ip > limits.max_pending:
        sec.warn("max_pending_per_ip", "larger than max_pending: one address can take every handshake slot")
    return limits


def read_drain(top: Section) -> float:
    """``drain.timeout``: how long SIGTERM lets connections finish before the goodbyes."""
    sec = top.section("drain")
    if sec is None:
        return 25.0
    sec.check_keys(("timeout",))
    return sec.duration("timeout", 25.0)


def read_reload(top: Section) -> float | None:
    """``reload.watch`` (reload when the files change, polled every ``reload.interval``)."""
    sec = top.section("reload")
    if sec is None:
        return None
    sec.check_keys(("watch", "interval"))
    watch = sec.boolean("watch", False)
    interval = sec.duration("interval", 5.0)
    return interval if watch is True else None


def read_crl_settings(top: Section, state_dir: Path | None) -> CrlSettings:
    """``crl``: the CRL cache folder (default under ``state_dir``), refresh and fetch bounds."""
    sec = top.section("crl")
    default_dir = state_dir / "crl" if state_dir is not None else None
    if sec is None:
        return CrlSettings(cache_dir=default_dir)
    sec.check_keys(CRL_TOP_KEYS)
    cache_dir = sec.string("cache_dir", None)
    d = CrlSettings()
    max_bytes = sec.integer("max_bytes", d.max_bytes, minimum=1024)
    return CrlSettings(
        cache_dir=sec.resolve(cache_dir) if isinstance(cache_dir, str) else default_dir,
        refresh_max=sec.duration("refresh_max", d.refresh_max),
        retry_min=sec.duration("retry_min", d.retry_min),
        timeout=sec.duration("timeout", d.timeout),
        max_bytes=max_bytes if isinstance(max_bytes, int) else d.max_bytes,
    )
