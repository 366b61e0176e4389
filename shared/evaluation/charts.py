"""The evaluation report's plots as inline SVG (no chart library, nothing fetched): a
precision-recall curve, precision per category, and query time against k.

Pure functions of the report's JSON (``report.json`` as :func:`~shared.evaluation.report.write_report`
writes it); every text is escaped, so the SVG can be embedded in a page as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

MODE_COLOURS = {"label": "#1f6fb4", "svm": "#e07b12", "svm-fallback": "#22a03c", "none": "#7a7a7a"}
EXTRA_COLOURS = ("#9c4dc4", "#c43d6b", "#3b9fb0", "#8a6d1e")
# Dashes keep lines that lie on each other (routed modes often do) all visible.
MODE_DASHES = {"svm": "7 4", "svm-fallback": "2 3"}

WIDTH, HEIGHT = 520, 320
LEFT, RIGHT, TOP, BOTTOM = 58, 130, 34, 46


def colour(mode: str, n: int = 0) -> str:
    return MODE_COLOURS.get(mode, EXTRA_COLOURS[n % len(EXTRA_COLOURS)])


def _num(value: float) -> str:
    return f"{value:.1f}"


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.2g}"


def nice_step(span: float, n: int = 5) -> float:
    """A step of 1, 2, 2.5 or 5 times a power of ten that cuts ``span`` into at most ``n`` parts."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    mag = 10.0 ** math.floor(math.log10(span / n))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if span / (m * mag) <= n + 1e-9:
            return m * mag
    return 10.0 * mag


def linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    step = nice_step(hi - lo, n)
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(max(count, 0))]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(float(x))


def _frame(title: str, x_label: str, y_label: str, label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{escape(label)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(label)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold" fill="#222">{escape(title)}</text>',
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" fill="#333">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(14 {TOP + (HEIGHT - TOP - BOTTOM) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" fill="#333">{escape(y_label)}</text>',
    ]


def _legend(names: Sequence[str]) -> list[str]:
    out = []
    x = WIDTH - RIGHT + 14
    for n, name in enumerate(names):
        y = TOP + 8 + n * 18
        out.append(f'<rect x="{x}" y="{y - 8}" width="12" height="12" fill="{colour(name, n)}"/>')
        out.append(f'<text x="{x + 17}" y="{y + 2}" fill="#222">{escape(name)}</text>')
    return out


def _empty(title: str, message: str) -> str:
    parts = _frame(title, "", "", title)
    parts.append(f'<text x="{WIDTH / 2:.1f}" y="{HEIGHT / 2:.1f}" text-anchor="middle" fill="#777">'
                 f"{escape(message)}</text>")
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str, y_label: str,
               x_log: bool = False, y_range: tuple[float, float] | None = None,
               x_range: tuple[float, float] | None = None) -> str:
    """One line (with dots) per series; ``x_log`` for a logarithmic x axis."""
    pts = {name: [(float(x), float(y)) for x, y in points if _finite(x) and _finite(y) and (not x_log or x > 0)]
           for name, points in series.items()}
    pts = {name: p for name, p in pts.items() if p}
    if not pts:
        return _empty(title, "no data")
    xs = [x for p in pts.values() for x, _ in p]
    ys = [y for p in pts.values() for _, y in p]
    x0, x1 = x_range or (min(xs), max(xs))
    if y_range is None:
        top = max(max(ys), 0.0) * 1.05 or 1.0
        step = nice_step(top)
        y_range = (0.0, math.ceil(top / step - 1e-9) * step)
    y0, y1 = y_range
    if x_log:
        x0, x1 = math.log10(x0), math.log10(x1)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 <= y0:
        y1 = y0 + 1.0
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        v = math.log10(x) if x_log else x
        return LEFT + (v - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    parts = _frame(title, x_label, y_label, title)
    # Grid and ticks.
    for yv in linear_ticks(y0, y1):
        y = sy(yv)
        parts.append(f'<line x1="{LEFT}" y1="{_num(y)}" x2="{LEFT + pw}" y2="{_num(y)}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end" fill="#555">{_tick(yv)}</text>')
    distinct = sorted(set(xs))
    if x_log and len(distinct) <= 8:
        ticks = distinct  # a few cut-offs (the study's k): label each one
    elif x_log:
        ticks = [10.0 ** e for e in range(math.floor(x0), math.ceil(x1) + 1) if x0 - 1e-9 <= e <= x1 + 1e-9]
    else:
        ticks = linear_ticks(x0, x1)
    for xv in ticks:
        x = sx(xv)
        parts.append(f'<line x1="{_num(x)}" y1="{TOP}" x2="{_num(x)}" y2="{TOP + ph}" stroke="#eeeeee"/>')
        parts.append(f'<text x="{_num(x)}" y="{TOP + ph + 15}" text-anchor="middle" fill="#555">{_tick(xv)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for n, (name, p) in enumerate(pts.items()):
        c = colour(name, n)
        path = " ".join(f"{'M' if i == 0 else 'L'}{_num(sx(x))},{_num(sy(y))}" for i, (x, y) in enumerate(p))
        dash = MODE_DASHES.get(name)
        parts.append(f'<path class="series" data-series="{escape(name)}" d="{path}" fill="none" stroke="{c}" '
                     f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for x, y in p:
            parts.append(f'<circle cx="{_num(sx(x))}" cy="{_num(sy(y))}" r="2.8" fill="{c}">'
                         f"<title>{escape(name)}: {x:g}, {y:.4g}</title></circle>")
    parts += _legend(list(pts))
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(groups: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str,
              y_label: str, y_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """Grouped bars: one group per entry of ``groups``, one bar per series in each."""
    names = [n for n, vals in series.items() if any(_finite(v) for v in vals)]
    if not groups or not names:
        return _empty(title, "no data")
    y0, y1 = y_range
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = pw / len(groups)
    bar_w = max(2.0, (group_w * 0.8) / len(names))

    def sy(y: float) -> float:
        return TOP + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    parts = _frame(title, "category", y_label, title)
    for yv in linear_ticks(y0, y1):
        parts.append(f'<line x1="{LEFT}" y1="{_num(sy(yv))}" x2="{LEFT + pw}" y2="{_num(sy(yv))}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{_num(sy(yv) + 4)}" text-anchor="end" fill="#555">{_tick(yv)}</text>')
    for g, group in enumerate(groups):
        gx = LEFT + g * group_w + group_w * 0.1
        for n, name in enumerate(names):
            vals = series[name]
            v = vals[g] if g < len(vals) else None
            if not _finite(v):
                continue
            x = gx + n * bar_w
            top = sy(float(v))  # type: ignore[arg-type]
            parts.append(f'<rect class="bar" data-series="{escape(name)}" x="{_num(x)}" y="{_num(top)}" '
                         f'width="{_num(bar_w - 1)}" height="{_num(TOP + ph - top)}" fill="{colour(name, n)}">'
                         f"<title>{escape(name)} / {escape(group)}: {float(v):.3f}</title></rect>")  # type: ignore[arg-type]
        parts.append(f'<text x="{_num(LEFT + g * group_w + group_w / 2)}" y="{TOP + ph + 15}" text-anchor="middle" '
                     f'fill="#333">{escape(group)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    parts += _legend(names)
    parts.append("</svg>")
    return "\n".join(parts)


def pr_curve_chart(report: Mapping[str, Any]) -> str:
    curve = report.get("pr_curve") or {}
    title = "Precision-recall (mean over queries)"
    if not curve:
        return _empty(title, "no curve in this report: re-run `fir evaluate`")
    series = {mode: [(p.get("recall"), p.get("precision")) for p in points] for mode, points in curve.items()}
    return line_chart(series, title=title, x_label="recall", y_label="precision",
                      y_range=(0.0, 1.0), x_range=(0.0, 1.0))


def per_category_chart(report: Mapping[str, Any]) -> str:
    per = report.get("per_category") or {}
    k = (report.get("meta") or {}).get("per_category_k", 10)
    cats = list(dict.fromkeys(c for v in per.values() for c in v))
    series = {mode: [vals.get(c) for c in cats] for mode, vals in per.items()}
    return bar_chart(cats, series, title=f"Accuracy (precision@{k}) per category", y_label=f"precision@{k}")


def query_time_chart(report: Mapping[str, Any]) -> str:
    series: dict[str, list[tuple[float, float]]] = {}
    for row in report.get("rows") or []:
        if _finite(row.get("k")) and _finite(row.get("ms_matching")):
            series.setdefault(str(row.get("mode")), []).append((float(row["k"]), float(row["ms_matching"])))
    for points in series.values():
        points.sort()
    return line_chart(series, title="Query time against k (matching, one query)", x_label="k (log scale)",
                      y_label="ms per query", x_log=True)


def report_charts(report: Mapping[str, Any]) -> dict[str, str]:
    """The three plots of the evaluation page, as SVG strings."""
    return {"pr_curve": pr_curve_chart(report), "per_category": per_category_chart(report),
            "query_time": query_time_chart(report)}
