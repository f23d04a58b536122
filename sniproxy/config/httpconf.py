"""The ``http`` section of an ``https`` listener (docs/https.md).

Owns: its schema (mode, identity header profiles, card header names, extra names to strip, paths that
need a card, parser limits, backend response timeout, pool limits) and the checks that tie it to the
listener's protocol. Called by ``load``; must not touch sockets.
"""

from __future__ import annotations

import re
from typing import Any

from sniproxy.config.fields import MISSING, Report, Section
from sniproxy.config.model import DEFAULT_CARD_HEADERS, HeaderProfile, HttpMode, HttpOptions, Protocol

HTTP_KEYS = ("mode", "headers", "card_headers", "strip", "card_required_paths", "max_request_line",
             "max_header_bytes", "response_timeout", "pool")
POOL_KEYS = ("max_idle", "idle_timeout")
#: RFC 9110 §5.6.2 token characters: what a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def read_http(report: Report, sec: Section, protocol: Any) -> HttpOptions | None:
    """The listener's ``http`` section; defaults for an ``https`` listener without one, else None."""
    raw = sec.raw("http")
    if raw is MISSING:
        return HttpOptions() if protocol is Protocol.HTTPS else None
    if protocol is not Protocol.HTTPS and isinstance(protocol, Protocol):
        sec.error("http", f"http options are for protocol https, not {protocol.value}")
        return None
    hsec = sec.section("http")
    if hsec is None:
        return None
    before = len(report.errors)
    hsec.check_keys(HTTP_KEYS)
    d = HttpOptions()
    mode = hsec.enum("mode", HttpMode, d.mode)
    profiles = _header_profiles(report, hsec)
    card = _card_headers(report, hsec)
    strip = _strip(report, hsec)
    paths = _card_paths(report, hsec)
    max_line = hsec.integer("max_request_line", d.max_request_line, minimum=256, maximum=1 << 20)
    max_head = hsec.integer("max_header_bytes", d.max_header_bytes, minimum=1024, maximum=1 << 22)
    if isinstance(max_line, int) and isinstance(max_head, int) and max_line > max_head:
        hsec.error("max_request_line", f"{max_line} is larger than max_header_bytes ({max_head})")
    response_timeout = hsec.seconds("response_timeout", d.response_timeout)
    psec = hsec.section("pool")
    max_idle, idle_timeout = d.pool_max_idle, d.pool_idle_timeout
    if psec is not None:
        psec.check_keys(POOL_KEYS)
        max_idle = psec.integer("max_idle", d.pool_max_idle, minimum=0, maximum=1024)
        idle_timeout = psec.seconds("idle_timeout", d.pool_idle_timeout)
    if len(report.errors) > before or MISSING in (mode, max_line, max_head, max_idle):
        return None
    return HttpOptions(
        mode=mode, headers=tuple(profiles) if profiles is not None else d.headers,
        card_headers=tuple(card.items()), strip=tuple(strip),
        card_required_paths=tuple(paths) if paths is not None else d.card_required_paths,
        max_request_line=max_line, max_header_bytes=max_head, response_timeout=response_timeout,
        pool_max_idle=max_idle, pool_idle_timeout=idle_timeout,
    )


def _header_profiles(report: Report, hsec: Section) -> list[HeaderProfile] | None:
    """``headers``: the identity header profiles, each once; None when the key is absent (the default)."""
    items = hsec.strings("headers")
    if items is None:
        return None
    profiles: list[HeaderProfile] = []
    for value, line, path in items:
        try:
            profile = HeaderProfile(value)
        except ValueError:
            report.error(line, path, f"unknown header profile {value!r} "
                                     f"(allowed: {', '.join(p.value for p in HeaderProfile)})")
            continue
        if profile in profiles:
            report.error(line, path, f"header profile {value!r} listed twice")
            continue
        profiles.append(profile)
    return profiles


def _card_headers(report: Report, hsec: Section) -> dict[str, str]:
    """``card_headers``: the header name of each card field, the defaults for those not given."""
    card = dict(DEFAULT_CARD_HEADERS)
    csec = hsec.section("card_headers")
    if csec is not None:
        for field, name, line in csec.items():
            if field not in DEFAULT_CARD_HEADERS:
                report.error(line, csec.key(field), f"unknown card field {field!r} "
                                                    f"(allowed: {', '.join(DEFAULT_CARD_HEADERS)})")
            elif not isinstance(name, str) or not _TOKEN.match(name):
                report.error(line, csec.key(field), f"expected a header name (RFC 9110 token), got {name!r}")
            else:
                card[field] = name
    return card


def _strip(report: Report, hsec: Section) -> list[str]:
    """``strip``: extra header names, or prefixes ending in ``*``, removed from client requests."""
    strip: list[str] = []
    for value, line, path in hsec.strings("strip") or []:
        if not _TOKEN.match(value.removesuffix("*")):
            report.error(line, path, f"expected a header name or a prefix ending in *, got {value!r}")
        else:
            strip.append(value)
    return strip


def _card_paths(report: Report, hsec: Section) -> list[str] | None:
    """``card_required_paths``: path prefixes that need a card; None when the key is absent (the default)."""
    items = hsec.strings("card_required_paths")
    if items is None:
        return None
    paths: list[str] = []
    for value, line, path in items:
        if not value.startswith("/"):
            report.error(line, path, f"expected a path prefix starting with /, got {value!r}")
        else:
            paths.append(value)
    return paths
