"""Text renderings of the report dict: ``table`` (a terminal), ``csv`` (a spreadsheet), ``json`` (a program)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

TABLE_BLOCKERS = 50   # the terminal shows the most recent ones; csv and json carry them all
CSV_FIELDS = ("section", "listener", "flow", "key", "value", "last_seen", "last_sni", "why", "pki",
              "card_type", "name", "address", "moved_since", "kind")


def _counts(table: dict[str, int], limit: int = 8) -> str:
    items = list(table.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", +{len(items) - limit} more"
    return text or "-"


def render_json(report: dict[str, Any]) -> str:
    """The report as indented JSON."""
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_table(report: dict[str, Any]) -> str:
    """A plain-text report for a terminal, 120 columns wide at most."""
    out: list[str] = []
    w, t = report["window"], report["totals"]
    out.append("sniproxy migration readiness report")
    out.append(f"window: {w['since'] or 'start'} .. {w['until'] or 'end'}; events {w['first_event'] or '-'} .. "
               f"{w['last_event'] or '-'}" + (f"; listeners {', '.join(w['listeners'])}" if w["listeners"] else ""))
    inp = report.get("input")
    if inp:
        out.append(f"input: {inp['lines']} lines, {inp['events']} connection events, {inp['malformed']} malformed "
                   f"line(s) skipped, {inp['outside_window']} outside the window")
    out.append(f"totals: {t['connections']} connections, {t['holders']} card holders, {t['addresses']} addresses, "
               f"{t['no_sni_clients']} no-SNI clients ({t['no_sni_connections']} connections), "
               f"{t['blocking_clients']} blocking clients")
    if report["verdict"]:
        out.append("")
        out.append("VERDICT: " + report["verdict"]["text"])
    out.append("")
    out.append(f"holders by card PKI: {_counts(report['holders_by_pki'])}")
    out.append(f"holders by card type: {_counts(report['holders_by_card_type'])}")
    out.append("")
    head = f"{'listener':<10} {'flow':<10} {'conns':>8} {'holders':>8} {'addrs':>7} {'no-SNI':>7}  first .. last seen"
    out.append(head)
    out.append("-" * len(head))
    for g in report["groups"]:
        out.append(f"{g['listener']:<10} {g['flow']:<10} {g['connections']:>8} {g['holders']:>8} "
                   f"{g['addresses']:>7} {g['no_sni_clients']:>7}  {g['first_seen']} .. {g['last_seen']}")
        for label, key in (("SNI", "sni"), ("PKI", "pki"), ("cards", "card_types"), ("TLS", "tls_versions"),
                           ("outcome", "outcomes"), ("refused", "refusals")):
            if g[key]:
                out.append(f"    {label:<8} {_counts(g[key])}")
    out.append("")
    blockers = report["blockers"]
    out.append(f"BLOCKS THE CUTOVER: {len(blockers)} client(s) on {'/'.join(report['legacy_flows'])} or without SNI, "
               "most recent first")
    if blockers:
        out.append(f"{'client':<24} {'name':<22} {'why':<12} {'last seen':<21} {'last SNI':<30} {'conns':>6}  "
                   "on a new flow since")
        for b in blockers[:TABLE_BLOCKERS]:
            client = b["id"] if b["kind"] == "holder" else f"@{b['id']}"
            out.append(f"{client:<24.24} {b['name'] or '':<22.22} {b['why']:<12} {b['last_seen']:<21} "
                       f"{b['last_sni'] or '(none)':<30.30} {b['connections']:>6}  {b['moved_since'] or '-'}")
        if len(blockers) > TABLE_BLOCKERS:
            out.append(f"... and {len(blockers) - TABLE_BLOCKERS} more (use --format csv or json for all)")
    out.append("")
    out.append("client software: " + (report["client_software"] or "see the blockers' client_software column"))
    if report["truncated"]:
        out.append("lower bounds (tables full): " + ", ".join(report["truncated"]))
    if report["pseudonymized"]:
        out.append("holders are pseudonymized (keyed hash of IdNat_PS); names omitted")
    return "\n".join(out) + "\n"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class _SafeWriter(csv.DictWriter):  # type: ignore[type-arg]
    """A DictWriter that defuses spreadsheet formulas: SNI names and card fields come from clients."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        """Write one row, a text cell that a spreadsheet would run as a formula prefixed with ``'``."""
        safe = {k: ("'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v) for k, v in rowdict.items()}
        return super().writerow(safe)


def render_csv(report: dict[str, Any]) -> str:
    """One CSV table, a ``section`` column telling rows apart (filter on it in a spreadsheet).

    Sections: ``total`` and ``group`` (key = figure), ``sni``, ``pki``, ``card_type``, ``tls_version``,
    ``refusal`` (key = name, value = connections), ``holders_by_pki``, ``blocker`` (key = holder or
    address, told apart by ``kind``; value = connections, with when, why and the last SNI), ``day``,
    ``verdict``. Cells a spreadsheet would run as a formula (SNI names come from clients) start with ``'``.
    """
    buf = io.StringIO()
    wr = _SafeWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    wr.writeheader()
    for k, v in report["totals"].items():
        wr.writerow({"section": "total", "key": k, "value": v})
    for k, v in report["holders_by_pki"].items():
        wr.writerow({"section": "holders_by_pki", "key": k, "value": v})
    for k, v in report["holders_by_card_type"].items():
        wr.writerow({"section": "holders_by_card_type", "key": k, "value": v})
    for g in report["groups"]:
        base = {"listener": g["listener"], "flow": g["flow"]}
        for k in ("connections", "holders", "addresses", "no_sni_connections", "no_sni_clients",
                  "first_seen", "last_seen"):
            wr.writerow({**base, "section": "group", "key": k, "value": g[k]})
        for section, key in (("sni", "sni"), ("pki", "pki"), ("card_type", "card_types"),
                             ("tls_version", "tls_versions"), ("refusal", "refusals"), ("outcome", "outcomes")):
            for name, n in g[key].items():
                wr.writerow({**base, "section": section, "key": name, "value": n})
    for b in report["blockers"]:
        wr.writerow({"section": "blocker", "listener": b["listener"], "flow": b["flow"],
                     "key": b["id"], "kind": b["kind"], "value": b["connections"],
                     "last_seen": b["last_seen"], "last_sni": b["last_sni"] or "", "why": b["why"], "pki": b["pki"],
                     "card_type": b["card_type"], "name": b["name"] or "", "address": b["address"],
                     "moved_since": b["moved_since"] or ""})
    for d in report["days"]:
        wr.writerow({"section": "day", "key": d["day"], "value": sum(d["flows"].values()),
                     "why": f"no_sni={d['no_sni']} blocking={d['blocking']}"})
    if report["verdict"]:
        wr.writerow({"section": "verdict", "key": report["verdict"]["cutover_date"],
                     "value": report["verdict"]["would_break"], "why": report["verdict"]["text"]})
    return buf.getvalue()
