"""report.html for reports of every mode: sections, inline SVG, no external resources, print CSS."""

from __future__ import annotations

import pytest
from sparsify_runner.report import Report
from sparsify_runner.report_html import SECTION_IDS, render_report_html

from .htmlcheck import check_self_contained, svgs
from .reports import MODES, make_report, old_report_json

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_renders_all_sections(mode):
    report = make_report(mode)
    html = render_report_html(report)
    assert html.startswith("<!DOCTYPE html>")
    page = check_self_contained(html)
    assert [i for i in page.ids if i in SECTION_IDS] == list(SECTION_IDS)
    for root in svgs(html):
        assert root.tag == f"{NS}svg"
    text = page.section_text
    assert "2.00x faster" in text["summary"] and "12.5 s" in text["summary"]
    assert "comes from INT8" in text["speedup-source"]
    assert "file size: 25.0% of the baseline (4.00x smaller)" in text["speedup-source"]
    assert 'a note with <markup> & "quotes"' in text["notes"]  # escaped in the source, intact as text
    assert "<markup>" not in html
    if mode in ("unstructured", "channels"):
        assert "features.11.conv" in text["layers"]
        assert "Sparsity per layer" in html
    else:
        assert text["layers"].strip().endswith("No per-layer data in this report.")
    if mode == "baseline":
        assert "No INT8 candidates were measured" in text["candidates"]
    else:
        assert (
            "qdq-per-channel (chosen)" in text["candidates"] and "INT8 candidates: speed vs fidelity" in html
        )
    assert "did no training" in text["training"]


def test_training_run_has_curves_and_candidates_plot_highlights_the_choice():
    html = render_report_html(make_report("channels", training=True))
    page = check_self_contained(html)
    assert "Training loss" in html and "Accuracy and sparsity" in html
    assert "phases: main, qat" in page.section_text["training"]
    scatter = next(r for r in svgs(html) if "chart-scatter" in r.get("class"))
    assert len(scatter.findall(f".//{NS}circle[@class='highlight']")) == 1
    lines = [r for r in svgs(html) if "chart-line" in r.get("class")]
    assert len(lines) == 2


def test_latency_plot_uses_samples_and_old_reports_still_render():
    new = make_report("quantization-only")
    html = render_report_html(new)
    box = next(r for r in svgs(html) if "chart-box" in r.get("class"))
    assert len(box.findall(f".//{NS}g[@class='box']")) == 2
    assert "kept no per-iteration samples" not in html

    old = Report.model_validate_json(old_report_json(new))
    assert old.baseline.latency.samples_ms is None
    html = render_report_html(old)
    check_self_contained(html)
    assert "kept no per-iteration samples" in html
    box = next(r for r in svgs(html) if "chart-box" in r.get("class"))
    assert len(box.findall(f".//{NS}g[@class='box']")) == 2


def test_minimal_report_says_what_is_missing():
    report = make_report("baseline")
    report = report.model_copy(
        update={
            "fidelity": None,
            "speedup": None,
            "speedup_source": "",
            "notes": [],
            "timings_s": {},
            "artifacts": {},
            "settings": {},
        }
    )
    report.baseline.latency = None
    report.optimized.latency = None
    html = render_report_html(report)
    page = check_self_contained(html)
    assert [i for i in page.ids if i in SECTION_IDS] == list(SECTION_IDS)
    assert "No latency was measured" in page.section_text["latency"]
    assert "does not say where the speedup came from" in page.section_text["speedup-source"]
    assert "No notes." in page.section_text["notes"]
    assert svgs(html) == []  # nothing to plot: one line per section instead of empty plots


def test_experiment_text_is_escaped():
    report = make_report("unstructured", name='<img src=x onerror="alert(1)">')
    html = render_report_html(report)
    page = check_self_contained(html)  # no src attribute made it into the markup
    assert "img" not in page.tags
    assert "<h1>Sparsify report: &lt;img src=x onerror=&quot;alert(1)&quot;&gt;</h1>" in html


def test_candidates_without_measurements_get_a_line_not_an_empty_plot():
    report = make_report("unstructured")
    for c in report.candidates:
        c.fidelity = None
    html = render_report_html(report)
    page = check_self_contained(html)
    assert "No candidate has both a speed and a fidelity" in page.section_text["candidates"]
    assert "qdq-per-tensor" in page.section_text["candidates"]  # the table is still there
    assert not any("chart-scatter" in r.get("class") for r in svgs(html))
