"""The report as one JSON-able dict, built from an ``Aggregate``: what every renderer reads.

Holder identifiers go through ``pseudonym`` here, so no renderer can leak a raw IdNat_PS when the
report is pseudonymized (names are then dropped too).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sniproxy.report.aggregate import (
    B_ADDR,
    B_CARD,
    B_COUNT,
    B_FIRST,
    B_FLOW,
    B_LAST,
    B_LISTENER,
    B_MOVED,
    B_NAME,
    B_PKI,
    B_SNI,
    B_SW,
    B_WHY,
    DAY,
    Aggregate,
)
from sniproxy.report.reader import ReadStats

TREND_DAYS = 7   # the verdict's trend is read on a 7-day moving average: daily counts swing with weekends
NO_SOFTWARE = "the connection events carry no client software field (no User-Agent or IMAP ID is logged)"


def iso(ts: float | None) -> str | None:
    """``2026-12-06T18:40:00Z`` (UTC, seconds), or None."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def day_iso(day: int) -> str:
    """The UTC date of a day number (days since the epoch)."""
    return datetime.fromtimestamp(day * DAY, UTC).date().isoformat()


def pseudonymizer(key: bytes) -> Callable[[str], str]:
    """A keyed hash of IdNat_PS (HMAC-SHA-256, 16 hex digits): stable for one key, not reversible without it."""
    def pseudo(holder: str) -> str:
        return "ps-" + hmac.new(key, holder.encode(), hashlib.sha256).hexdigest()[:16]
    return pseudo


@dataclass(frozen=True, slots=True)
class Options:
    """What the caller asked for: the window (for the header), the cutover date, pseudonymization."""

    since: float | None = None
    until: float | None = None
    cutover: date | None = None
    pseudonym: Callable[[str], str] | None = None
    listeners: tuple[str, ...] = ()


def _sorted_counts(table: dict[str, int]) -> dict[str, int]:
    return dict(sorted(table.items(), key=lambda kv: (-kv[1], kv[0])))


def _verdict(agg: Aggregate, blockers: list[dict[str, Any]], days: list[dict[str, Any]],
             cutover: date) -> dict[str, Any]:
    holders = sum(1 for b in blockers if b["kind"] == "holder")
    count = len(blockers)
    moved = sum(1 for b in blockers if b["moved_since"])
    series = [(d["day"], d["blocking"]) for d in days]
    avg: list[tuple[str, float]] = []
    for i in range(len(series)):
        window = series[max(0, i - TREND_DAYS + 1):i + 1]
        avg.append((series[i][0], sum(n for _, n in window) / len(window)))
    falling_since: str | None = None
    peak = 0.0
    if len(avg) >= 2:
        # Since the last day the average stood at its highest: a plateau or a bump on the way down does not
        # reset the date, a new high does.
        top = max(a for _, a in avg)
        day, value = next((d, a) for d, a in reversed(avg) if a == top)
        if value > avg[-1][1]:
            falling_since, peak = day, value
    flows = "/".join(sorted(agg.legacy_flows))
    text = f"Cutover on {cutover.isoformat()}: "
    if count == 0:
        text += f"no client was seen on {flows} or without SNI in this window: nothing would break by these logs."
    else:
        text += (f"{count} client(s) would break ({holders} card holder(s), {count - holders} address(es) "
                 f"without a card), seen on {flows} or without SNI in this window; ")
        if moved:
            text += f"{moved} of them were seen on a new flow with SNI after that (probably moved); "
        if falling_since is not None:
            text += (f"falling since {falling_since} ({peak:.1f} a day then, {avg[-1][1]:.1f} a day now, "
                     f"{TREND_DAYS}-day average).")
        else:
            text += "not falling."
    last_day = datetime.fromtimestamp(agg.last, UTC).date() if agg.last else None
    if last_day is not None and cutover <= last_day:
        text += " (The date is not after the last event: this reads what broke, not what would.)"
    return {"cutover_date": cutover.isoformat(), "would_break": count, "holders": holders,
            "addresses": count - holders, "probably_moved": moved, "falling_since": falling_since,
            "daily_now": round(avg[-1][1], 2) if avg else 0.0, "daily_peak": round(peak, 2), "text": text}


def build(agg: Aggregate, stats: ReadStats | None, opts: Options) -> dict[str, Any]:
    """The report dict (the ``json`` format, and what ``table``, ``csv`` and ``html`` render)."""
    pseudo = opts.pseudonym
    groups = []
    all_holders: set[str] = set()
    all_addresses: set[str] = set()
    no_sni_addresses: set[str] = set()
    for (listener, flow), g in sorted(agg.groups.items()):
        all_holders |= g.holders
        all_addresses |= g.addresses
        no_sni_addresses |= g.no_sni_addresses
        groups.append({
            "listener": listener, "flow": flow, "connections": g.connections,
            "outcomes": _sorted_counts(g.outcomes), "holders": len(g.holders), "addresses": len(g.addresses),
            "no_sni_connections": g.no_sni, "no_sni_clients": len(g.no_sni_addresses),
            "sni": _sorted_counts(g.sni), "pki": _sorted_counts(g.pki), "card_types": _sorted_counts(g.card_types),
            "tls_versions": _sorted_counts(g.tls_versions), "refusals": _sorted_counts(g.refusals),
            "first_seen": iso(g.first), "last_seen": iso(g.last),
        })
    by_pki, by_card = _holder_counts(agg)
    blockers, folded = _blockers(agg, pseudo)
    days = [{"day": day_iso(d), "flows": _sorted_counts(v.flows), "hellos": v.hellos, "no_sni": v.no_sni,
             "no_sni_share": round(v.no_sni / v.hellos, 4) if v.hellos else 0.0,
             "pki": _sorted_counts(v.pki), "blocking": v.blocking_count} for d, v in sorted(agg.days.items())]
    report: dict[str, Any] = {
        "report": "sniproxy migration readiness",
        "generated": iso(datetime.now(UTC).timestamp()),
        "window": {"since": iso(opts.since), "until": iso(opts.until), "first_event": iso(agg.first),
                   "last_event": iso(agg.last), "listeners": list(opts.listeners) or None},
        "legacy_flows": sorted(agg.legacy_flows),
        "pseudonymized": pseudo is not None,
        "totals": {"connections": agg.events, "holders": len(all_holders), "addresses": len(all_addresses),
                   "no_sni_clients": len(no_sni_addresses),
                   "no_sni_connections": sum(g.no_sni for g in agg.groups.values()),
                   "blocking_clients": len(blockers), "folded_addresses": folded},
        "holders_by_pki": _sorted_counts(by_pki),
        "holders_by_card_type": _sorted_counts(by_card),
        "groups": groups,
        "blockers": blockers,
        "days": days,
        "verdict": _verdict(agg, blockers, days, opts.cutover) if opts.cutover else None,
        "client_software": None if agg.software_seen else NO_SOFTWARE,
        "truncated": sorted(agg.truncated),
    }
    if stats is not None:
        report["input"] = {"lines": stats.lines, "events": stats.events, "malformed": stats.malformed,
                           "outside_window": stats.outside_window, "malformed_examples": stats.examples or []}
    return report


def _holder_counts(agg: Aggregate) -> tuple[dict[str, int], dict[str, int]]:
    """Card holders per PKI and per card type (each holder counted once, with its newest card)."""
    by_pki: dict[str, int] = {}
    by_card: dict[str, int] = {}
    for h, p in agg.holder_pki.items():
        by_pki[p] = by_pki.get(p, 0) + 1
        c = agg.holder_card.get(h, "unknown")
        by_card[c] = by_card.get(c, 0) + 1
    return by_pki, by_card


def _blockers(agg: Aggregate, pseudo: Callable[[str], str] | None) -> tuple[list[dict[str, Any]], int]:
    """The clients that block the cutover, most recent first, and how many addresses were folded into holders."""
    blockers = []
    # An address seen without a card (a refused handshake, say) that is also a listed holder's address is
    # that holder's client, not another one to call.
    holder_addrs = {rec[B_ADDR] for key, rec in agg.blockers.items() if not key.startswith("@")}
    folded = 0
    for key, rec in sorted(agg.blockers.items(), key=lambda kv: (-kv[1][B_LAST], kv[0])):
        is_addr = key.startswith("@")
        if is_addr and key[1:] in holder_addrs:
            folded += 1
            continue
        moved = rec[B_MOVED] if len(rec) > B_MOVED and rec[B_MOVED] and rec[B_MOVED] > rec[B_LAST] else None
        ident = key[1:] if is_addr else (pseudo(key) if pseudo else key)
        blockers.append({
            "kind": "address" if is_addr else "holder", "id": ident,
            "name": None if pseudo or is_addr else rec[B_NAME],
            "why": rec[B_WHY], "last_seen": iso(rec[B_LAST]), "first_seen": iso(rec[B_FIRST]),
            "last_sni": rec[B_SNI], "listener": rec[B_LISTENER], "flow": rec[B_FLOW],
            "address": rec[B_ADDR], "pki": rec[B_PKI], "card_type": rec[B_CARD],
            "connections": rec[B_COUNT], "client_software": rec[B_SW], "moved_since": iso(moved),
        })
    return blockers, folded
