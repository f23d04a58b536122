"""Inline SVG charts for the report page: no script, no font file, no external reference.

Every series is one ``<g class="series" data-series="NAME">`` so a test (or a reader of the source) can
find it; every chart has a ``<title>`` and ``<desc>`` for screen readers and printouts.
"""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 28
PALETTE = ("#1f6fb2", "#d9822b", "#2e8b57", "#8e44ad", "#c0392b", "#7f8c8d", "#b8860b", "#16a085")


def _frame(chart_id: str, title: str, desc: str, body: list[str], y_max: float, y_label: str,
           days: list[str]) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{chart_id}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="{chart_id}-t {chart_id}-d">',
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#444"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#444"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end" font-size="10">{escape(y_label)}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" font-size="10">0</text>',
    ]
    if days:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" font-size="10">{escape(days[0])}</text>')
        if len(days) > 1:
            parts.append(f'<text x="{LEFT + plot_w}" y="{HEIGHT - 8}" text-anchor="end" font-size="10">'
                         f'{escape(days[-1])}</text>')
    else:
        parts.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" '
                     'font-size="12">no data</text>')
    parts += body
    parts.append("</svg>")
    return "".join(parts)


def _legend(names: list[str], first_color: int = 0) -> list[str]:
    out = []
    x = WIDTH - RIGHT + 12
    for i, name in enumerate(names):
        y = TOP + 4 + i * 16
        color = PALETTE[(first_color + i) % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{y + 9}" font-size="11">{escape(name)}</text>')
    return out


def stacked_bars(chart_id: str, title: str, days: list[str], series: dict[str, list[int]]) -> str:
    """One bar per day, stacked by series (e.g. connections per flow); ``series`` values align with ``days``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(vals[i] for vals in series.values()) for i in range(len(days))]
    y_max = max(totals, default=0) or 1
    step = plot_w / max(len(days), 1)
    bar = max(step * 0.8, 0.5)
    names = list(series)
    base = [0.0] * len(days)
    body: list[str] = []
    for si, name in enumerate(names):
        color = PALETTE[si % len(PALETTE)]
        rects = []
        for i, v in enumerate(series[name]):
            if not v:
                continue
            h = v / y_max * plot_h
            y = TOP + plot_h - base[i] - h
            base[i] += h
            rects.append(f'<rect x="{LEFT + i * step + (step - bar) / 2:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{color}"><title>{escape(days[i])} {escape(name)}: {v}</title></rect>')
        body.append(f'<g class="series" data-series="{escape(name)}">{"".join(rects)}</g>')
    desc = "; ".join(f"{n}: {sum(series[n])}" for n in names) or "no data"
    return _frame(chart_id, title, desc, body + _legend(names), y_max, str(y_max), days)


def line(chart_id: str, title: str, days: list[str], name: str, values: list[float], percent: bool = True) -> str:
    """A line over days (e.g. the no-SNI share), 0 to 100 % when ``percent``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    y_max = 1.0 if percent else (max(values, default=0) or 1)
    step = plot_w / max(len(days), 1)
    pts = [(LEFT + i * step + step / 2, TOP + plot_h - v / y_max * plot_h) for i, v in enumerate(values)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{PALETTE[1]}"><title>{escape(days[i])}: '
                   f'{values[i] * 100 if percent else values[i]:.1f}{"%" if percent else ""}</title></circle>'
                   for i, (x, y) in enumerate(pts))
    body = [f'<g class="series" data-series="{escape(name)}"><polyline points="{path}" fill="none" '
            f'stroke="{PALETTE[1]}" stroke-width="2"/>{dots}</g>']
    last = f"{values[-1] * 100:.1f}%" if values and percent else (f"{values[-1]}" if values else "no data")
    return _frame(chart_id, title, f"{name}, last day {last}", body + _legend([name], first_color=1),
                  y_max, "100%" if percent else str(y_max), days)


def charts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The page's three charts as ``(heading, svg)``: connections per day by flow, no-SNI share, card PKI mix."""
    days = report["days"]
    labels = [d["day"] for d in days]
    flows = sorted({f for d in days for f in d["flows"]})
    pkis = sorted({p for d in days for p in d["pki"]})
    return [
        ("Connections per day, by flow",
         stacked_bars("chart-flows", "Connections per day, by flow", labels,
                      {f: [d["flows"].get(f, 0) for d in days] for f in flows})),
        ("Share of ClientHellos without SNI",
         line("chart-nosni", "Share of ClientHellos without SNI, per day", labels, "no-SNI share",
              [d["no_sni_share"] for d in days])),
        ("Card PKI mix (connections with a verified card, per day)",
         stacked_bars("chart-pki", "Card PKI mix per day", labels,
                      {p: [d["pki"].get(p, 0) for d in days] for p in pkis})),
    ]
