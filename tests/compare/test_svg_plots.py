"""svg_plots: well-formed, deterministic, escaped SVG with the marks the data implies."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sparsify_runner import svg_plots

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    assert root.find(f"{NS}title") is not None
    return root


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


def test_bar_chart_bars_ticks_and_escaping():
    labels = ["conv<1>", 'fc&"head"', "skip"]
    svg = svg_plots.bar_chart(
        labels, [0.5, 0.8, None], title="Sparsity <per> layer", x_label="layer", y_label="sparsity"
    )
    root = parse(svg)
    bars = root.findall(f".//{NS}g[@class='bars']/{NS}rect")
    assert len(bars) == 2  # None is a gap, not a zero bar
    heights = [float(b.get("height")) for b in bars]
    assert heights[1] / heights[0] == pytest.approx(0.8 / 0.5, rel=0.02)
    words = texts(root)
    assert "Sparsity <per> layer" in words and 'fc&"head"' in words and "n/a" in words
    assert "80%" in words and "0%" in words  # value labels and y ticks use value_format
    assert svg == svg_plots.bar_chart(
        labels, [0.5, 0.8, None], title="Sparsity <per> layer", x_label="layer", y_label="sparsity"
    )


def test_bar_chart_many_layers_rotates_and_shortens():
    names = [f"model.encoder.layer.{i}.attention.output.dense" for i in range(60)]
    root = parse(
        svg_plots.bar_chart(
            names,
            [i / 60 for i in range(60)],
            title="t",
            x_label="layer",
            y_label="sparsity",
            value_format="{:.1%}",
        )
    )
    rotated = [t for t in root.iter(f"{NS}text") if "rotate(-45" in (t.get("transform") or "")]
    assert len(rotated) == 60 and all(len(t.text) <= 22 for t in rotated)
    tips = [t.text for t in root.iter(f"{NS}title")]
    assert any(tip.startswith(names[59]) for tip in tips)  # the full name survives in the tooltip
    with pytest.raises(ValueError, match="2 labels but 1 values"):
        svg_plots.bar_chart(["a", "b"], [1.0], title="t", x_label="x", y_label="y")


def test_scatter_highlight_front_and_missing_points():
    points = [(1.0, 0.90, "a"), (2.0, 0.95, "b"), (3.0, 0.93, "c"), (None, 0.99, "d"), (1.5, 0.97, "e")]
    root = parse(
        svg_plots.scatter(
            points,
            title="acc vs latency",
            x_label="ms",
            y_label="acc",
            highlight={"a", "e"},
            front=["e", "a"],
        )
    )
    circles = root.findall(f".//{NS}circle")
    assert len(circles) == 4
    assert sorted(c.get("class") for c in circles).count("highlight") == 2
    line = root.find(f".//{NS}polyline[@class='front']")
    xy = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
    assert len(xy) == 2 and xy[0][0] < xy[1][0]  # joined in increasing x: a (1.0) then e (1.5)
    assert any("not plotted" in t and "d" in t for t in texts(root))


def test_scatter_and_line_chart_without_data_say_so():
    for svg in (
        svg_plots.scatter([(None, None, "x")], title="empty", x_label="x", y_label="y"),
        svg_plots.line_chart({"s": []}, title="empty", x_label="x", y_label="y"),
        svg_plots.box_plot({}, title="empty", y_label="ms"),
        svg_plots.bar_chart([], [], title="empty", x_label="x", y_label="y"),
    ):
        assert "no data" in texts(parse(svg))


def test_line_chart_series_and_legend():
    root = parse(
        svg_plots.line_chart(
            {"loss": [(2, 0.5), (0, 2.0), (1, 1.0)], "acc": [(0, 0.3), (2, None)]},
            title="curves",
            x_label="epoch",
            y_label="value",
        )
    )
    lines = root.findall(f".//{NS}polyline")
    assert len(lines) == 1  # "acc" has one measured point: a dot, no line
    xs = [float(p.split(",")[0]) for p in lines[0].get("points").split()]
    assert xs == sorted(xs)
    assert {"loss", "acc"} <= set(texts(root))


def test_box_plot_from_samples_and_from_partial_stats():
    rng = np.random.default_rng(0)
    samples = rng.gamma(4.0, 1.0, 300).tolist()
    stats = svg_plots.summary_stats(samples)
    for key, q in (("p10", 10), ("median", 50), ("p90", 90)):
        assert stats[key] == pytest.approx(float(np.percentile(samples, q)))
    assert stats["min"] == min(samples) and stats["max"] == max(samples)
    root = parse(
        svg_plots.box_plot(
            {"baseline": samples, "old": {"median": 3.0, "p90": 4.0, "mean": 3.2}},
            title="latency",
            y_label="ms",
        )
    )
    boxes = root.findall(f".//{NS}g[@class='box']")
    assert len(boxes) == 2
    assert len(boxes[0].findall(f"{NS}line")) == 4  # whisker, two caps, median
    assert len(boxes[1].findall(f"{NS}line")) == 1  # median only: no min/max recorded


def test_nice_ticks_cover_the_range():
    assert svg_plots.nice_ticks(0, 0)[0] == 0 and svg_plots.nice_ticks(0, 0)[-1] == 1
    for lo, hi in ((0, 1), (0.913, 0.957), (3, 3), (-2.5, 7.1), (0, 1234), (-4, -4)):
        ticks = svg_plots.nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) >= 2
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1
