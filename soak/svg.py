"""Plain SVG line charts (no plotting library): a few panels, each with named series over time."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Panel:
    """One chart: a title, a y-axis label, series of (x, y) points, and shaded x spans."""

    title: str
    ylabel: str
    series: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)
    spans: list[tuple[float, float, str]] = field(default_factory=list)   # (x0, x1, label)
    ymin: float | None = 0.0


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    step = next((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), raw)
    start = (lo // step) * step
    out: list[float] = []
    v = start
    while v <= hi + 1e-9 and len(out) < 20:
        if v >= lo - 1e-9:
            out.append(v)
        v += step
    return out


def render(panels: list[Panel], xlabel: str, width: int = 900, panel_height: int = 220) -> str:
    """The SVG document of ``panels`` stacked vertically, sharing the x axis range."""
    left, right, top, bottom = 70, 170, 28, 36
    xs = [x for p in panels for _, pts in p.series for x, _ in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    height = len(panels) * panel_height
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    pw = width - left - right
    for i, p in enumerate(panels):
        oy = i * panel_height
        ph = panel_height - top - bottom
        ys = [y for _, pts in p.series for _, y in pts] or [0.0, 1.0]
        y0 = min(ys) if p.ymin is None else min(p.ymin, min(ys))
        y1 = max(ys)
        if y1 <= y0:
            y1 = y0 + 1
        y1 += (y1 - y0) * 0.05

        def sx(x: float) -> float:
            return left + (x - x0) / (x1 - x0) * pw

        def sy(y: float, oy: int = oy, ph: int = ph, y0: float = y0, y1: float = y1) -> float:
            return oy + top + ph - (y - y0) / (y1 - y0) * ph

        parts.append(f'<text x="{left}" y="{oy + 16}" font-size="13" font-weight="bold">{escape(p.title)}</text>')
        for sx0, sx1, label in p.spans:
            a, b = sx(max(x0, sx0)), sx(min(x1, sx1))
            if b > a:
                parts.append(f'<rect x="{a:.1f}" y="{oy + top}" width="{b - a:.1f}" height="{ph}" fill="#eee"/>')
                parts.append(f'<text x="{a + 2:.1f}" y="{oy + top + 10}" fill="#888" font-size="9">'
                             f"{escape(label)}</text>")
        parts.append(f'<rect x="{left}" y="{oy + top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for t in _ticks(y0, y1):
            parts.append(f'<line x1="{left - 4}" x2="{left}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#999"/>')
            parts.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
        for t in _ticks(x0, x1, 8):
            parts.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{oy + top + ph}" y2="{oy + top + ph + 4}" '
                         'stroke="#999"/>')
            parts.append(f'<text x="{sx(t):.1f}" y="{oy + top + ph + 15}" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="14" y="{oy + top + ph / 2:.0f}" transform="rotate(-90 14 {oy + top + ph / 2:.0f})" '
                     f'text-anchor="middle">{escape(p.ylabel)}</text>')
        parts.append(f'<text x="{left + pw / 2:.0f}" y="{oy + panel_height - 6}" text-anchor="middle">'
                     f"{escape(xlabel)}</text>")
        for j, (label, pts) in enumerate(p.series):
            color = COLORS[j % len(COLORS)]
            if pts:
                path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
                if len(pts) < 40:
                    parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{color}"/>' for x, y in pts]
            ly = oy + top + 12 + j * 14
            parts.append(f'<rect x="{left + pw + 10}" y="{ly - 8}" width="10" height="3" fill="{color}"/>')
            parts.append(f'<text x="{left + pw + 24}" y="{ly - 4}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
