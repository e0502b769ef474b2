"""A real one-shot run through ``sparsifyctl run`` publishes report.html next to report.json."""

from __future__ import annotations

import json
from pathlib import Path

from oneshot.conftest import FAST
from sparsify_runner.report import LATENCY_SAMPLES_CAP, Report
from sparsify_runner.report_html import SECTION_IDS

from .conftest import run_cli
from .htmlcheck import check_self_contained, svgs


def _run(tiny_onnx: Path, data: Path, out: Path, level: float, capsys, *extra: str):
    return run_cli(
        [
            "run",
            "one-shot",
            "--use-case",
            "my-custom-sensor",
            "--model",
            str(tiny_onnx),
            "--data",
            str(data),
            "--optim-level",
            str(level),
            "--output",
            str(out),
            "--recipe-args",
            FAST,
            "--quiet",
            *extra,
        ],
        capsys,
    )


def test_one_shot_run_publishes_report_html(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "out"
    # the size objective with a wide budget ships the pruned model (its zeros are the layer chart)
    wide = ("--objective", "size", "--max-accuracy-drop", "1")
    code, _, stderr = _run(tiny_onnx, samples, out, 0.5, capsys, *wide)
    assert code == 0, stderr
    report = Report.model_validate_json((out / "report.json").read_text())
    assert report.artifacts["html"] == str(out / "report.html")
    marker = json.loads((out / "_SUCCESS.json").read_text())
    assert {"model.onnx", "report.json", "report.html"} <= set(marker["files"])
    lat = report.baseline.latency
    assert lat.samples_ms and len(lat.samples_ms) == min(lat.iterations, LATENCY_SAMPLES_CAP)
    assert min(lat.samples_ms) <= lat.median_ms <= max(lat.samples_ms)

    html = (out / "report.html").read_text(encoding="utf-8")
    page = check_self_contained(html)
    assert [i for i in page.ids if i in SECTION_IDS] == list(SECTION_IDS)
    kinds = {root.get("class").split()[1] for root in svgs(html)}
    assert {"chart-bar", "chart-box", "chart-scatter"} <= kinds  # layers, latency, INT8 candidates
    assert "kept no per-iteration samples" not in html
    assert report.mode in ("unstructured", "channels")
    assert report.layers[0].name in page.section_text["layers"]
    assert not list(out.glob(".sparsify-staging*/**/*.html"))


def test_failed_html_render_never_costs_the_run(tiny_onnx, samples, tmp_path, capsys, monkeypatch):
    from sparsify_runner import run as run_mod

    def broken(report):
        raise RuntimeError("template bug")

    monkeypatch.setattr(run_mod, "render_report_html", broken)
    out = tmp_path / "out"
    code, _, stderr = _run(tiny_onnx, samples, out, 0.0, capsys)
    assert code == 0, stderr
    assert (out / "model.onnx").is_file() and not (out / "report.html").exists()
    report = json.loads((out / "report.json").read_text())
    assert "html" not in report["artifacts"]
    assert any("report.html could not be rendered (RuntimeError: template bug)" in n for n in report["notes"])


def test_compare_a_real_local_sweep(tiny_onnx, samples, tmp_path, capsys):
    """``sparsifyctl sweep`` writes sweep.json + one run per point; compare expands it."""
    out = tmp_path / "sweep"
    code, _, stderr = run_cli(
        [
            "sweep",
            "one-shot",
            "--use-case",
            "my-sensor",
            "--model",
            str(tiny_onnx),
            "--data",
            str(samples),
            "--output",
            str(out),
            "--recipe-args",
            FAST,
            "--quiet",
            "--optim-levels",
            "0,0.2",
            "--max-accuracy-drop",
            "1",
        ],
        capsys,
    )
    assert code == 0, stderr
    page = tmp_path / "sweep.html"
    code, stdout, stderr = run_cli(["compare", str(out), "--json", "--html", str(page)], capsys)
    assert code == 0, stderr
    runs = json.loads(stdout)["runs"]
    assert [(r["label"], r["phase"], r["details"]["optimLevel"]) for r in runs] == [
        ("optim-000-u", "Succeeded", 0.0),
        ("optim-020-u", "Succeeded", 0.2),
    ]
    # level 0.2 ships INT8 only where it measured faster than the baseline (on the tiny CNN it may not)
    assert [r["headline"]["mode"] for r in runs][0] == "baseline"
    assert runs[1]["headline"]["mode"] in ("baseline", "quantization-only")
    for r in runs:
        assert (out / r["label"] / "report.html").is_file()
    check_self_contained(page.read_text(encoding="utf-8"))
