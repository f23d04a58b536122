"""The report as one self-contained HTML page: inline CSS and SVG, no script, no font, no external URL.

The same page serves ``--format html`` (a file mailed to the project board) and the live ``/migration``
route (with ``note`` explaining it covers one proxy since its start). Readable on a laptop, printable.
"""

from __future__ import annotations

from html import escape
from typing import Any

from sniproxy.report.svg import charts

HTML_BLOCKERS = 500

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:16px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #ccc}
.meta{color:#555;font-size:12px}.verdict{border-left:5px solid #c0392b;background:#fdf2f0;padding:8px 12px;
margin:12px 0;font-weight:600}.verdict.ok{border-color:#2e8b57;background:#eef8f1}
.kpis{display:flex;flex-wrap:wrap;gap:8px}.kpi{border:1px solid #ddd;border-radius:4px;padding:6px 10px;min-width:120px}
.kpi b{display:block;font-size:20px}table{border-collapse:collapse;width:100%;font-size:12px}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right}.chart{width:100%;height:auto;max-height:260px}
.note{background:#f4f8fc;border:1px solid #cfe0f0;padding:8px 12px;font-size:12px}
code{font-size:12px;background:#f4f4f4;padding:0 3px}
@media print{body{max-width:none;padding:0;font-size:11px}h2{break-after:avoid}.chart,table,tr{break-inside:avoid}
.note{border-color:#999}}
"""


def _counts(table: dict[str, int]) -> str:
    return ", ".join(f"{escape(k)}&nbsp;{v}" for k, v in table.items()) or "-"


def _verdict(report: dict[str, Any]) -> str:
    v = report["verdict"]
    if v is None:
        n = report["totals"]["blocking_clients"]
        cls = "verdict ok" if n == 0 else "verdict"
        return (f'<p class="{cls}">{n} client(s) seen on {escape("/".join(report["legacy_flows"]))} or without SNI '
                'in this window (give <code>--cutover-date</code> for a verdict on a date).</p>')
    cls = "verdict ok" if v["would_break"] == 0 else "verdict"
    return f'<p class="{cls}" id="verdict">{escape(v["text"])}</p>'


def render_html(report: dict[str, Any], note: str = "") -> str:
    """The whole page."""
    w, t = report["window"], report["totals"]
    out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           # an empty inline icon: without it the browser asks the admin route for /favicon.ico (a 404)
           '<link rel="icon" href="data:,">',
           "<title>sniproxy migration readiness</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>Migration readiness: 2BIS flow, SNI and card PKI</h1>",
           f'<p class="meta">Generated {escape(report["generated"] or "")}. Window '
           f'{escape(w["since"] or "start")} .. {escape(w["until"] or "end")}; events from '
           f'{escape(w["first_event"] or "-")} to {escape(w["last_event"] or "-")}'
           + (f'; listeners {escape(", ".join(w["listeners"]))}' if w["listeners"] else "") + ".</p>"]
    if note:
        out.append(f'<div class="note">{note}</div>')
    out.append(_verdict(report))
    out.append('<div class="kpis">')
    for label, key in (("connections", "connections"), ("card holders", "holders"), ("client addresses", "addresses"),
                       ("no-SNI clients", "no_sni_clients"), ("blocking clients", "blocking_clients")):
        out.append(f'<div class="kpi"><b id="kpi-{key}">{t[key]}</b>{label}</div>')
    out.append("</div>")
    out.append("<h2>Charts</h2>")
    for heading, svg in charts(report):
        out.append(f"<h3>{escape(heading)}</h3>{svg}")
    out.append("<h2>Card holders by PKI and card type</h2>")
    out.append(f"<p>PKI: {_counts(report['holders_by_pki'])}<br>Card types: "
               f"{_counts(report['holders_by_card_type'])}</p>")
    out += _groups(report)
    out += _blockers(report)
    out += _about(report)
    return "".join(out)


def _groups(report: dict[str, Any]) -> list[str]:
    """The per listener and flow table."""
    out: list[str] = []
    out.append("<h2>Per listener and flow</h2><table id=\"groups\"><thead><tr><th>listener</th><th>flow</th>"
               "<th>connections</th><th>holders</th><th>addresses</th><th>no-SNI clients</th><th>SNI names</th>"
               "<th>card PKI</th><th>card types</th><th>TLS</th><th>refusals</th><th>first / last seen</th>"
               "</tr></thead><tbody>")
    for g in report["groups"]:
        out.append(f"<tr><td>{escape(g['listener'])}</td><td>{escape(g['flow'])}</td>"
                   f"<td class=n>{g['connections']}</td><td class=n>{g['holders']}</td>"
                   f"<td class=n>{g['addresses']}</td>"
                   f"<td class=n>{g['no_sni_clients']}</td><td>{_counts(g['sni'])}</td><td>{_counts(g['pki'])}</td>"
                   f"<td>{_counts(g['card_types'])}</td><td>{_counts(g['tls_versions'])}</td>"
                   f"<td>{_counts(g['refusals'])}</td><td>{escape(g['first_seen'] or '')}<br>"
                   f"{escape(g['last_seen'] or '')}</td></tr>")
    out.append("</tbody></table>")
    return out


def _blockers(report: dict[str, Any]) -> list[str]:
    """The clients that block the cutover (the first ``HTML_BLOCKERS``)."""
    out: list[str] = []
    blockers = report["blockers"]
    out.append(f"<h2>Blocks the cutover ({len(blockers)})</h2>"
               f"<p>Card holders (or addresses, when no card was verified) seen on "
               f"{escape('/'.join(report['legacy_flows']))} or without SNI, most recent first.</p>")
    out.append('<table id="blockers"><thead><tr><th>holder / address</th><th>name</th><th>why</th><th>last seen</th>'
               "<th>last SNI</th><th>listener / flow</th><th>address</th><th>card</th><th>connections</th>"
               "<th>on a new flow since</th>"
               "</tr></thead><tbody>")
    for b in blockers[:HTML_BLOCKERS]:
        out.append(f"<tr><td>{escape(b['id'])}</td><td>{escape(b['name'] or '')}</td><td>{escape(b['why'])}</td>"
                   f"<td>{escape(b['last_seen'] or '')}</td><td>{escape(b['last_sni'] or '(none)')}</td>"
                   f"<td>{escape(b['listener'])} / {escape(b['flow'])}</td><td>{escape(b['address'] or '')}</td>"
                   f"<td>{escape(b['pki'])} {escape(b['card_type'])}</td><td class=n>{b['connections']}</td>"
                   f"<td>{escape(b['moved_since'] or '-')}</td></tr>")
    out.append("</tbody></table>")
    if len(blockers) > HTML_BLOCKERS:
        out.append(f"<p>... and {len(blockers) - HTML_BLOCKERS} more: run the report with "
                   "<code>--format csv</code> for the whole list.</p>")
    return out


def _about(report: dict[str, Any]) -> list[str]:
    """How to read the figures: input, truncation, pseudonymization."""
    out: list[str] = []
    out.append("<h2>About these figures</h2><ul>")
    inp = report.get("input")
    if inp:
        out.append(f"<li>Input: {inp['lines']} lines, {inp['events']} connection events, "
                   f"{inp['malformed']} malformed line(s) skipped, {inp['outside_window']} outside the window.</li>")
    out.append(f"<li>Client software: {escape(report['client_software'] or 'in the blockers list (JSON/CSV)')}.</li>")
    if report["truncated"]:
        out.append(f"<li>Lower bounds (tables full): {escape(', '.join(report['truncated']))}.</li>")
    if report["pseudonymized"]:
        out.append("<li>Holders are pseudonymized (keyed hash of IdNat_PS); names are omitted.</li>")
    out.append("</ul></body></html>\n")
    return out
