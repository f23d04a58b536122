"""The ``cutover`` list: scheduled changes, validated like every other key (file:line:key errors).

Each entry: ``at`` (an RFC 3339 instant with its UTC offset) and one change: a flow's
``certificate`` + ``key`` (``flow:``), or a listener's ``default_flow`` (``listener:``). Warnings:
the certificate a flow serves until a cutover expires before it (the 2BIS one before the switch to
IGC Santé), and a certificate a cutover puts in force is not valid at its instant.
Must not: decide when entries apply (``sniproxy.lifecycle.cutover``) or build contexts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sniproxy.config.fields import Report, Section
from sniproxy.config.model import Cutover, Flow, Listener
from sniproxy.config.pemfiles import Files

CUTOVER_KEYS = ("at", "flow", "certificate", "key", "listener", "default_flow")
ServerFiles = Callable[[Section, Path, Path], None]


def parse_instant(value: Any) -> dt.datetime | None:
    """An aware datetime from a YAML timestamp or an RFC 3339 string; None when unreadable or naive."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError:
            return None
    else:
        return None
    return when if when.tzinfo is not None else None


def read_cutovers(report: Report, top: Section, flows: dict[str, Flow], listeners: list[Listener],
                  files: Files | None, server_files: ServerFiles) -> tuple[Cutover, ...]:
    """Every valid entry of ``cutover``, in instant order (list order for equal instants)."""
    items = top.list_of("cutover")
    if not items:
        return ()
    by_listener = {ls.name: ls for ls in listeners}
    out: list[Cutover] = []
    for value, line, path in items:
        sec = Section.of(report, value, path, line, top.base_dir)
        if sec is None:
            continue
        entry = _entry(report, sec, line, flows, by_listener, files, server_files)
        if entry is not None:
            out.append(entry)
    out.sort(key=lambda c: c.at)
    if files is not None:
        _validity_warnings(report, out, flows, files)
    return tuple(out)


def _entry(report: Report, sec: Section, line: int, flows: dict[str, Flow], listeners: dict[str, Listener],
           files: Files | None, server_files: ServerFiles) -> Cutover | None:
    before = len(report.errors)
    sec.check_keys(CUTOVER_KEYS)
    raw_at = sec.raw("at", required=True)
    when = parse_instant(raw_at) if raw_at is not None else None
    if raw_at is not None and when is None and "at" in sec.data:
        sec.error("at", f"expected an RFC 3339 instant with its UTC offset (2026-06-01T06:00:00+02:00), "
                        f"got {raw_at!r}")
    has_flow, has_listener = "flow" in sec.data, "listener" in sec.data
    if has_flow == has_listener:
        sec.error(None, "an entry changes either a flow (flow + certificate + key) or a listener "
                        "(listener + default_flow)")
        return None
    if has_flow:
        for extra in ("listener", "default_flow"):
            if extra in sec.data:
                sec.error(extra, "only with listener:")
        name = sec.string("flow", required=True)
        cert = sec.string("certificate", required=True)
        key = sec.string("key", required=True)
        if isinstance(name, str) and name not in flows:
            sec.error("flow", f"unknown flow {name!r} (defined: {', '.join(sorted(flows)) or 'none'})")
        if files is not None and isinstance(cert, str) and isinstance(key, str):
            server_files(sec, sec.resolve(cert), sec.resolve(key))
        if len(report.errors) > before or when is None:
            return None
        return Cutover(at=when.timestamp(), at_text=when.isoformat(), line=line, flow=name,
                       certificate=sec.resolve(cert), key=sec.resolve(key))
    for extra in ("certificate", "key"):
        if extra in sec.data:
            sec.error(extra, "only with flow:")
    lname = sec.string("listener", required=True)
    target = sec.string("default_flow", required=True)
    if isinstance(lname, str):
        ls = listeners.get(lname)
        if ls is None:
            sec.error("listener", f"unknown listener {lname!r} (defined: {', '.join(sorted(listeners)) or 'none'})")
        elif not ls.routes:
            sec.error("listener", f"listener {lname} has a single flow (`flow:`): switch that flow's certificate "
                                  "instead, or give the listener sni routes and a default_flow")
    if isinstance(target, str) and target not in flows:
        sec.error("default_flow", f"unknown flow {target!r} (defined: {', '.join(sorted(flows)) or 'none'})")
    if len(report.errors) > before or when is None:
        return None
    return Cutover(at=when.timestamp(), at_text=when.isoformat(), line=line, listener=lname, default_flow=target)


def _not_after(files: Files, path: Path, line: int, key: str) -> tuple[dt.datetime, dt.datetime] | None:
    certs = files.certs(path, line, key)
    return (certs[0].not_valid_before_utc, certs[0].not_valid_after_utc) if certs else None


def _validity_warnings(report: Report, entries: list[Cutover], flows: dict[str, Flow],
                       files: Files) -> None:
    """Walk the schedule in order, tracking each flow's certificate, and warn on gaps in validity."""
    serving = {name: f.certificate for name, f in flows.items()}
    for i, c in enumerate(entries):
        at = dt.datetime.fromtimestamp(c.at, dt.UTC)
        key = f"cutover[{i}]"
        if c.flow is not None and c.certificate is not None:
            current = serving.get(c.flow)
            if current is not None:
                validity = _not_after(files, current, c.line, key)
                if validity is not None and validity[1] < at:
                    report.warn(c.line, key, f"the certificate flow {c.flow} serves until this cutover ({current}) "
                                             f"expires on {validity[1]:%Y-%m-%d %H:%M}Z, before the cutover at "
                                             f"{c.at_text}: clients get an expired certificate in between")
            validity = _not_after(files, c.certificate, c.line, f"{key}.certificate")
            if validity is not None and not validity[0] <= at < validity[1]:
                report.warn(c.line, f"{key}.certificate",
                            f"{c.certificate} is not valid at the cutover instant {c.at_text} (valid "
                            f"{validity[0]:%Y-%m-%d %H:%M}Z to {validity[1]:%Y-%m-%d %H:%M}Z)")
            serving[c.flow] = c.certificate
        elif c.default_flow is not None:
            target = serving.get(c.default_flow)
            if target is not None:
                validity = _not_after(files, target, c.line, f"{key}.default_flow")
                if validity is not None and not validity[0] <= at < validity[1]:
                    report.warn(c.line, f"{key}.default_flow",
                                f"flow {c.default_flow}'s certificate {target} is not valid at the cutover "
                                f"instant {c.at_text}")
