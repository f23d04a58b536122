"""``sniproxy report``: read logs, aggregate, render. Errors the user can fix are one line and exit 2."""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sniproxy.report.aggregate import Aggregate
from sniproxy.report.html import render_html
from sniproxy.report.reader import ReadStats, parse_time, read_events
from sniproxy.report.render import render_csv, render_json, render_table
from sniproxy.report.summary import Options, build, pseudonymizer

_RELATIVE = re.compile(r"^(\d+)([dh])$")
FORMATS = ("table", "csv", "json", "html")


def parse_when(text: str, now: datetime | None = None) -> float:
    """``2026-12-01``, ``2026-12-01T08:00:00Z``, or relative ``30d`` / ``12h`` (before now). ValueError else."""
    m = _RELATIVE.match(text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        now = now or datetime.now(UTC)
        return (now - (timedelta(days=n) if unit == "d" else timedelta(hours=n))).timestamp()
    ts = parse_time(text.strip())
    if ts is None:
        raise ValueError(f"not a date: {text!r} (use 2026-12-01, 2026-12-01T08:00:00Z or 30d)")
    return ts


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand's options."""
    p.add_argument("logs", nargs="*", default=["-"],
                   help="JSON-lines logs (plain or gzip; '-' is stdin); many files (replicas) are merged by time")
    p.add_argument("--since", help="first instant counted: ISO date/time (UTC if no offset) or 30d, 12h")
    p.add_argument("--until", help="instant the window ends (excluded), same forms")
    p.add_argument("--listener", action="append", default=[], help="only this listener (repeatable)")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--out", help="write here instead of stdout (written whole, then renamed)")
    p.add_argument("--cutover-date", help="planned cutover date (YYYY-MM-DD): adds the verdict line")
    p.add_argument("--legacy-flow", action="append", default=[],
                   help="flow that goes away at the cutover (repeatable; default: 2bis)")
    p.add_argument("--pseudonymize", action="store_true",
                   help="replace IdNat_PS by a keyed hash and drop names, for sharing the report")
    p.add_argument("--key-file", help="key of the hash (same key = same pseudonyms across reports; "
                                      "default: a random key for this run)")


def run(args: argparse.Namespace) -> int:
    """Run the report; 0 on success, 2 on a usage error (bad date, unreadable file)."""
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
        cutover = date.fromisoformat(args.cutover_date) if args.cutover_date else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pseudo = None
    if args.pseudonymize:
        try:
            key = Path(args.key_file).read_bytes().strip() if args.key_file else os.urandom(32)
        except OSError as exc:
            print(f"error: --key-file: {exc}", file=sys.stderr)
            return 2
        if not key:
            print("error: --key-file is empty", file=sys.stderr)
            return 2
        pseudo = pseudonymizer(key)
    listeners = frozenset(args.listener)
    agg = Aggregate(legacy_flows=tuple(args.legacy_flow) or ("2bis",), seal_days=True)
    stats = ReadStats()
    # Nothing in this loop makes a reference cycle, yet every parsed event allocates dicts that wake the
    # cyclic collector, which then walks the aggregate's growing tables. Off here; the gain was within
    # this host's noise (docs/decisions/0004-report-speed.md), but it can only save time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for ts, ev in read_events(list(args.logs), stats, since, until):
            if listeners and ev.get("listener") not in listeners:
                continue
            agg.add(ts, ev)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if gc_was_enabled:
            gc.enable()
    report = build(agg, stats, Options(since=since, until=until, cutover=cutover, pseudonym=pseudo,
                                       listeners=tuple(sorted(listeners))))
    fmt = args.format
    if fmt == "html":
        text = render_html(report, note="Full report over the logs. " + LOGS_HOWTO)
    else:
        text = {"table": render_table, "csv": render_csv, "json": render_json}[fmt](report)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    else:
        sys.stdout.write(text)
    if stats.malformed:
        print(f"warning: {stats.malformed} malformed line(s) skipped (first: {', '.join(stats.examples or [])})",
              file=sys.stderr)
    return 0


LOGS_HOWTO = ("Run it again over every replica's logs with <code>sniproxy report --since 30d --cutover-date "
              "YYYY-MM-DD --format html --out report.html pod-a.log pod-b.log.gz</code> "
              "(see docs/migration.md).")
