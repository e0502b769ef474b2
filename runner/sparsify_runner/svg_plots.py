"""Small, dependency-free SVG charts for report.html, ``sparsifyctl compare --html`` and the dashboard.

Each function returns one self-contained ``<svg>`` element (inline styles, no scripts, no
external fonts) so a page that embeds it reads offline and prints. Output is deterministic
(same input -> same string) and every piece of user text is XML-escaped, so report names
or layer names cannot break the markup. Values that are ``None`` or not finite are left out
of a plot rather than drawn at zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

__all__ = ["PALETTE", "bar_chart", "box_plot", "line_chart", "nice_ticks", "scatter", "summary_stats"]

# Colour-blind-safe (Okabe-Ito), dark enough to survive greyscale printing.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"
_MARGIN = {"left": 64, "right": 20, "top": 36, "bottom": 48}


# ---- numbers ------------------------------------------------------------------------------------


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _c(v: float) -> str:
    """A coordinate: two decimals, no trailing zeros (stable across platforms)."""
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 x 10^k)."""
    if not (_finite(lo) and _finite(hi)):
        return [0.0, 1.0]
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo == 0:
        hi = 1.0  # all zeros (an unpruned model's sparsity): a 0..1 axis, not -1..1
    elif hi == lo:
        pad = abs(lo) * 0.1
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-6:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi - step * 1e-6:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _tick_label(v: float, ticks: Sequence[float], fmt: str | None) -> str:
    if fmt:
        return fmt.format(v)
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    if step >= 1 and abs(step - round(step)) > 1e-9:  # 2.5, 25, ...
        decimals = 1
    text = f"{v:.{decimals}f}"
    return "0" if text.strip("-0.") == "" else text


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), stdlib only."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low))


def summary_stats(samples: Iterable[float]) -> dict[str, float]:
    """min / p10 / median / p90 / max / mean of samples (the box a box plot draws)."""
    values = sorted(float(v) for v in samples if _finite(v))
    if not values:
        return {}
    return {
        "min": values[0],
        "p10": _percentile(values, 0.10),
        "median": _percentile(values, 0.50),
        "p90": _percentile(values, 0.90),
        "max": values[-1],
        "mean": sum(values) / len(values),
        "n": float(len(values)),
    }


# ---- building blocks ----------------------------------------------------------------------------


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "middle", extra: str = "") -> str:
    return (
        f'<text x="{_c(x)}" y="{_c(y)}" font-size="{size}" text-anchor="{anchor}" fill="#222"'
        f"{extra}>{escape(text)}</text>"
    )


def _line(x1: float, y1: float, x2: float, y2: float, attrs: str = "") -> str:
    return f'<line x1="{_c(x1)}" y1="{_c(y1)}" x2="{_c(x2)}" y2="{_c(y2)}"{attrs}/>'


def _open(width: int, height: int, title: str, kind: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label={quoteattr(title)} style="{_FONT};max-width:100%;height:auto">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        _text(width / 2, 20, title, size=14, extra=' font-weight="600"'),
    ]


def _empty(width: int, height: int, title: str, kind: str, message: str = "no data") -> str:
    parts = _open(width, height, title, kind)
    parts.append(_text(width / 2, height / 2, message, size=12, extra=' fill-opacity="0.7"'))
    parts.append("</svg>")
    return "".join(parts)


class _Axes:
    """Linear x/y scales of one plot area, plus the axis lines, grid, ticks and labels."""

    def __init__(
        self,
        width: int,
        height: int,
        xs: Sequence[float],
        ys: Sequence[float],
        *,
        x_zero: bool = False,
        y_zero: bool = False,
    ) -> None:
        self.left, self.top = _MARGIN["left"], _MARGIN["top"]
        self.right, self.bottom = width - _MARGIN["right"], height - _MARGIN["bottom"]
        self.xticks = nice_ticks(min([*xs, 0.0] if x_zero else xs), max(xs))
        self.yticks = nice_ticks(min([*ys, 0.0] if y_zero else ys), max(ys))

    def x(self, v: float) -> float:
        lo, hi = self.xticks[0], self.xticks[-1]
        return self.left + (v - lo) / (hi - lo) * (self.right - self.left)

    def y(self, v: float) -> float:
        lo, hi = self.yticks[0], self.yticks[-1]
        return self.bottom - (v - lo) / (hi - lo) * (self.bottom - self.top)

    def draw(
        self,
        x_label: str,
        y_label: str,
        x_format: str | None,
        y_format: str | None,
        *,
        x_ticks: bool = True,
        x_label_y: float | None = None,
    ) -> list[str]:
        out = ['<g class="axes" stroke="#888" stroke-width="1">']
        for t in self.yticks:
            out.append(
                f'<line x1="{_c(self.left)}" y1="{_c(self.y(t))}" x2="{_c(self.right)}" '
                f'y2="{_c(self.y(t))}" stroke="#e3e3e3"/>'
            )
        out.append(_line(self.left, self.bottom, self.right, self.bottom))
        out.append(_line(self.left, self.top, self.left, self.bottom))
        out.append("</g>")
        for t in self.yticks:
            label = _tick_label(t, self.yticks, y_format)
            out.append(_text(self.left - 6, self.y(t) + 4, label, anchor="end"))
        if x_ticks:
            for t in self.xticks:
                out.append(
                    f'<line x1="{_c(self.x(t))}" y1="{_c(self.bottom)}" x2="{_c(self.x(t))}" '
                    f'y2="{_c(self.bottom + 4)}" stroke="#888"/>'
                )
                out.append(_text(self.x(t), self.bottom + 16, _tick_label(t, self.xticks, x_format)))
        label_y = self.bottom + 38 if x_label_y is None else x_label_y
        out.append(_text((self.left + self.right) / 2, label_y, x_label, size=12))
        mid = (self.top + self.bottom) / 2
        out.append(_text(16, mid, y_label, size=12, extra=f' transform="rotate(-90 16 {_c(mid)})"'))
        return out


def _short(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


# ---- charts -------------------------------------------------------------------------------------


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    title: str,
    x_label: str,
    y_label: str,
    value_format: str = "{:.0%}",
    width: int | None = None,
    height: int = 340,
) -> str:
    """Vertical bars, one per label (x = categories, y = values formatted with
    ``value_format``); long label lists rotate and shorten their names (full name in a
    tooltip). A value of None leaves a gap labelled "n/a"."""
    labels = [str(label) for label in labels]
    if len(labels) != len(values):
        raise ValueError(f"bar_chart: {len(labels)} labels but {len(values)} values")
    measured = [float(v) for v in values if _finite(v)]
    n = len(labels)
    rotate = n > 8 or any(len(label) > 10 for label in labels)
    width = width or max(640, _MARGIN["left"] + _MARGIN["right"] + 16 * n)
    bottom_extra = 110 if rotate else 0
    height = height + bottom_extra
    if not measured:
        return _empty(width, height, title, "bar")
    axes = _Axes(width, height, [0.0, 1.0], measured, y_zero=True)
    axes.bottom -= bottom_extra
    parts = _open(width, height, title, "bar")
    slot = (axes.right - axes.left) / n
    bar_w = max(2.0, min(48.0, slot * 0.75))
    # the x label sits under the (possibly rotated) category names
    parts += axes.draw(x_label, y_label, None, value_format, x_ticks=False, x_label_y=height - 10)
    parts.append('<g class="bars">')
    zero = axes.y(max(0.0, axes.yticks[0]))
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        cx = axes.left + slot * (i + 0.5)
        if _finite(value):
            top = axes.y(float(value))
            y0, h = min(top, zero), abs(zero - top)
            tip = f"{label}: {value_format.format(value)}"
            parts.append(
                f'<rect x="{_c(cx - bar_w / 2)}" y="{_c(y0)}" width="{_c(bar_w)}" height="{_c(h)}" '
                f'fill="{PALETTE[0]}"><title>{escape(tip)}</title></rect>'
            )
            if n <= 24:
                parts.append(_text(cx, y0 - 4, value_format.format(value), size=10))
        else:
            parts.append(_text(cx, zero - 4, "n/a", size=10))
        name = _short(label)
        if rotate:
            ty = axes.bottom + 12
            parts.append(
                _text(
                    cx, ty, name, size=10, anchor="end", extra=f' transform="rotate(-45 {_c(cx)} {_c(ty)})"'
                )
            )
        else:
            parts.append(_text(cx, axes.bottom + 16, name, size=11))
    parts.append("</g></svg>")
    return "".join(parts)


def scatter(
    points: Sequence[tuple[float | None, float | None, str]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    highlight: set[str] | None = None,
    front: list[str] | None = None,
    x_format: str | None = None,
    y_format: str | None = None,
    width: int = 640,
    height: int = 360,
) -> str:
    """Points labelled by name; names in ``highlight`` drawn larger and darker; names in
    ``front`` joined by a line in increasing x (a Pareto front). Points with a missing
    coordinate are listed under the plot as "not plotted" instead of being dropped silently."""
    highlight = set(highlight or ())
    plotted = [(float(x), float(y), str(label)) for x, y, label in points if _finite(x) and _finite(y)]
    missing = [str(label) for x, y, label in points if not (_finite(x) and _finite(y))]
    if not plotted:
        return _empty(width, height, title, "scatter")
    xs, ys = [p[0] for p in plotted], [p[1] for p in plotted]
    span = max(xs) - min(xs)
    # room on the right for the point names, a little below the lowest point
    low = min(xs) - 0.03 * span
    xs += [max(xs) + 0.15 * span, max(low, 0.0) if min(xs) >= 0 else low]
    ys += [min(ys) - 0.03 * (max(ys) - min(ys)), max(ys) + 0.04 * (max(ys) - min(ys))]
    axes = _Axes(width, height, xs, ys)
    parts = _open(width, height, title, "scatter")
    parts += axes.draw(x_label, y_label, x_format, y_format)
    by_label = {label: (x, y) for x, y, label in plotted}
    line = sorted((by_label[name] for name in (front or []) if name in by_label), key=lambda p: p[0])
    if len(line) >= 2:
        coords = " ".join(f"{_c(axes.x(x))},{_c(axes.y(y))}" for x, y in line)
        parts.append(
            f'<polyline class="front" points="{coords}" fill="none" stroke="{PALETTE[1]}" '
            'stroke-width="2" stroke-dasharray="6 3"/>'
        )
    parts.append('<g class="points">')
    names = _place_names(plotted, axes, highlight) if len(plotted) <= 60 else {}
    for x, y, label in plotted:
        on = label in highlight
        r, colour = (6, PALETTE[1]) if on else (4, PALETTE[0])
        tip = f"{label}: {_tick_label(x, axes.xticks, x_format)}, {_tick_label(y, axes.yticks, y_format)}"
        parts.append(
            f'<circle cx="{_c(axes.x(x))}" cy="{_c(axes.y(y))}" r="{r}" fill="{colour}" '
            f'fill-opacity="0.85" stroke="#fff" class="{"highlight" if on else "point"}">'
            f"<title>{escape(tip)}</title></circle>"
        )
        if label in names:
            nx, ny = names[label]
            weight = ' font-weight="600"' if on else ""
            parts.append(_text(nx, ny, _short(label, 28), size=10, anchor="start", extra=weight))
    parts.append("</g>")
    if missing:
        parts.append(
            _text(
                axes.left,
                height - 4,
                "not plotted (missing values): " + ", ".join(missing),
                size=10,
                anchor="start",
            )
        )
    parts.append("</svg>")
    return "".join(parts)


def _place_names(
    plotted: Sequence[tuple[float, float, str]], axes: _Axes, highlight: set[str]
) -> dict[str, tuple[float, float]]:
    """Where each point's name goes (right of and above the point); a name that would overlap
    one already placed is left out (it stays in the point's tooltip). Highlighted first."""
    placed: list[tuple[float, float, float, float]] = []
    out: dict[str, tuple[float, float]] = {}
    for x, y, label in sorted(plotted, key=lambda p: p[2] not in highlight):
        tx, ty = axes.x(x) + 8, axes.y(y) - 6
        box = (tx, ty - 10, tx + 6.0 * len(_short(label, 28)), ty + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        out[label] = (tx, ty)
    return out


def line_chart(
    series: Mapping[str, Sequence[tuple[float | None, float | None]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_format: str | None = None,
    y_format: str | None = None,
    width: int = 640,
    height: int = 320,
) -> str:
    """One polyline per series (points sorted by x, missing values skipped), with a legend."""
    clean = {
        str(name): sorted((float(x), float(y)) for x, y in pts if _finite(x) and _finite(y))
        for name, pts in series.items()
    }
    clean = {name: pts for name, pts in clean.items() if pts}
    if not clean:
        return _empty(width, height, title, "line")
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    axes = _Axes(width, height, xs, ys)
    parts = _open(width, height, title, "line")
    parts += axes.draw(x_label, y_label, x_format, y_format)
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{_c(axes.x(x))},{_c(axes.y(y))}" for x, y in pts)
        parts.append(f'<g class="series"><title>{escape(name)}</title>')
        if len(pts) > 1:
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts if len(pts) <= 60 else pts[:: math.ceil(len(pts) / 60)]:
            parts.append(f'<circle cx="{_c(axes.x(x))}" cy="{_c(axes.y(y))}" r="2.5" fill="{colour}"/>')
        parts.append("</g>")
        # legend, top-right, one row per series
        ly = axes.top + 4 + 16 * i
        parts.append(
            f'<line x1="{_c(axes.right - 130)}" y1="{_c(ly)}" x2="{_c(axes.right - 112)}" y2="{_c(ly)}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        parts.append(_text(axes.right - 106, ly + 4, _short(name, 18), size=10, anchor="start"))
    parts.append("</svg>")
    return "".join(parts)


_BOX_KEYS = ("min", "p10", "median", "p90", "max", "mean")


def box_plot(
    groups: Mapping[str, Mapping[str, float | None] | Sequence[float]],
    *,
    title: str,
    y_label: str,
    y_format: str | None = None,
    width: int = 640,
    height: int = 320,
) -> str:
    """One box per group: p10..p90 box, median bar, min..max whiskers, mean diamond. A group
    is either a list of samples or a stats dict with any of min/p10/median/p90/max/mean;
    quantiles it does not have are simply not drawn (an old report with only median, p90
    and mean gets a box from median to p90 and no whiskers)."""
    stats: dict[str, dict[str, float]] = {}
    for name, group in groups.items():
        if isinstance(group, Mapping):
            s = {k: float(group[k]) for k in _BOX_KEYS if _finite(group.get(k))}
        else:
            s = summary_stats(group)
        if s:
            stats[str(name)] = s
    if not stats:
        return _empty(width, height, title, "box")
    # One stray timing (a busy machine) must not squash every box to a line: the axis covers
    # the boxes with some headroom, and a whisker beyond it is cut and labelled with its value.
    core = [v for s in stats.values() for k, v in s.items() if k in ("min", "p10", "median", "p90")]
    tails = [s[k] for s in stats.values() for k in ("max", "mean") if k in s]
    values = core or tails
    top = max(values)
    cap = top + 1.5 * max(top - min(values), 0.25 * abs(top))
    values = values + [m for m in tails if m <= cap] + ([cap] if any(m > cap for m in tails) else [])
    axes = _Axes(width, height, [0.0, 1.0], values, y_zero=True)
    axis_top = axes.yticks[-1]
    parts = _open(width, height, title, "box")
    parts += axes.draw("", y_label, None, y_format, x_ticks=False)
    slot = (axes.right - axes.left) / len(stats)
    box_w = min(90.0, slot * 0.5)
    for i, (name, s) in enumerate(stats.items()):
        colour = PALETTE[i % len(PALETTE)]
        cx = axes.left + slot * (i + 0.5)
        parts.append(f'<g class="box"><title>{escape(name)}: {escape(_describe(s, y_format))}</title>')
        if "min" in s and "max" in s:
            hi = min(s["max"], axis_top)
            stroke = f' stroke="{colour}" stroke-width="1.5"'
            parts.append(_line(cx, axes.y(s["min"]), cx, axes.y(hi), stroke))
            parts.append(_line(cx - box_w / 4, axes.y(s["min"]), cx + box_w / 4, axes.y(s["min"]), stroke))
            if s["max"] > axis_top:
                y = axes.y(axis_top)
                d = f"M{_c(cx)} {_c(y - 6)} L{_c(cx + 4)} {_c(y)} L{_c(cx - 4)} {_c(y)} Z"
                parts.append(f'<path d="{d}" fill="{colour}"/>')
                label = "max " + (y_format.format(s["max"]) if y_format else f"{s['max']:.4g}")
                parts.append(_text(cx + 8, y + 4, label, size=10, anchor="start"))
            else:
                parts.append(_line(cx - box_w / 4, axes.y(hi), cx + box_w / 4, axes.y(hi), stroke))
        lo = s.get("p10", s.get("median"))
        hi = s.get("p90", s.get("median"))
        if lo is not None and hi is not None:
            top, bot = axes.y(max(lo, hi)), axes.y(min(lo, hi))
            parts.append(
                f'<rect x="{_c(cx - box_w / 2)}" y="{_c(top)}" width="{_c(box_w)}" '
                f'height="{_c(max(1.0, bot - top))}" fill="{colour}" fill-opacity="0.25" '
                f'stroke="{colour}" stroke-width="1.5"/>'
            )
        if "median" in s:
            y = axes.y(s["median"])
            parts.append(
                f'<line x1="{_c(cx - box_w / 2)}" y1="{_c(y)}" x2="{_c(cx + box_w / 2)}" y2="{_c(y)}" '
                f'stroke="{colour}" stroke-width="3"/>'
            )
        if "mean" in s:
            x, y = cx, axes.y(min(s["mean"], axis_top))
            d = f"M{_c(x)} {_c(y - 5)} L{_c(x + 5)} {_c(y)} L{_c(x)} {_c(y + 5)} L{_c(x - 5)} {_c(y)} Z"
            parts.append(f'<path d="{d}" fill="#222"/>')
            if s["mean"] > axis_top:  # outliers pulled the mean off the axis: say where it is
                label = "mean " + (y_format.format(s["mean"]) if y_format else f"{s['mean']:.4g}")
                parts.append(_text(cx - 8, y + 4, label, size=10, anchor="end"))
        parts.append("</g>")
        parts.append(_text(cx, axes.bottom + 16, _short(name, 28), size=11))
    parts.append(
        _text(
            axes.left,
            height - 6,
            "box p10-p90, bar median, whiskers min-max (cut at the top when far off), diamond mean",
            size=10,
            anchor="start",
            extra=' fill-opacity="0.7"',
        )
    )
    parts.append("</svg>")
    return "".join(parts)


def _describe(s: Mapping[str, float], fmt: str | None) -> str:
    def f(v: float) -> str:
        return fmt.format(v) if fmt else f"{v:.4g}"

    return ", ".join(f"{k} {f(s[k])}" for k in _BOX_KEYS if k in s)
