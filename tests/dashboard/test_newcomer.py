"""What a newcomer hit on the dashboard (issue 25), through its HTTP app: runs named by
experiment, median latency, sizes that keep their digits, sparsity only for pruned runs (the
list and report.html), "new experiment like this" with absolute paths."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from compare.reports import make_report, write_run
from fastapi.testclient import TestClient
from sparsify_runner.report import Report
from sparsifyctl.dashboard.app import create_app

BASE = "http://127.0.0.1"


def _row(page: str, key: str) -> str:
    return page.split(f'<tr data-key="{key}">', 1)[1].split("</tr>", 1)[0]


def _cell(row: str, column: str) -> str:
    m = re.search(rf'data-col="{re.escape(column)}">(.*?)</td>', row, re.S)
    assert m, f"no {column} cell in {row}"
    return html.unescape(m.group(1)).strip()


def _skewed(report: Report) -> Report:
    """Mean latencies far from the medians, so a cell that shows the mean is caught."""
    for side in (report.baseline, report.optimized):
        side.latency.mean_ms = round(side.latency.median_ms * 3 + 0.5, 4)
    return report


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_run(root / "2024-06-01-a", _skewed(make_report("quantization-only", size=45_300, name="int8-edge")))
    pruned = _skewed(make_report("unstructured", size=2_410_000))
    write_run(root / "unnamed", pruned)
    return root


def test_runs_are_named_by_experiment_with_medians_sizes_and_sparsity(runs):
    client = TestClient(create_app([str(runs)], None, None), base_url=BASE)
    page = client.get("/")
    assert page.status_code == 200
    named, unnamed = _row(page.text, "0/2024-06-01-a"), _row(page.text, "0/unnamed")
    # the experiment's name when it has one (the folder under it), else the folder
    assert re.search(r'class="run-link"[^>]*>int8-edge</a>', named) and str(runs / "2024-06-01-a") in named
    assert re.search(r'class="run-link"[^>]*>unnamed</a>', unnamed)
    assert '<th data-col="median latency">median latency</th>' in page.text
    assert "Latency is the median per batch" in page.text
    for row, folder in ((named, "2024-06-01-a"), (unnamed, "unnamed")):
        rep = Report.model_validate_json((runs / folder / "report.json").read_text())
        assert _cell(row, "median latency") == f"{rep.optimized.latency.median_ms:.2f} ms"
    # a ~45 KB model keeps its digits; sparsity only where pruning was applied
    assert _cell(named, "size") == "45.3 KB" and _cell(unnamed, "size") == "2.41 MB"
    assert _cell(named, "sparsity") == "-" and _cell(unnamed, "sparsity") == "60.0%"
    # the run page: its title is the name too
    run = client.get("/runs/0/2024-06-01-a").text
    assert re.search(r'<h1 id="run-title">int8-edge ', run)


def test_report_html_shows_sparsity_only_for_pruned_runs(runs):
    int8 = make_report("quantization-only", name="int8-zeros")
    int8.optimized.sparsity = 0.0074  # INT8 weights rounded to zero: not a result
    write_run(runs / "zeros", int8)
    client = TestClient(create_app([str(runs)], None, None), base_url=BASE)
    quant = client.get("/report/0/zeros").text
    pruned = client.get("/report/0/unnamed").text
    assert "0.74%" not in quant and "0.7%" not in quant
    assert not re.search(r"<t[hd][^>]*>sparsity</t[hd]>", quant)
    assert re.search(r"<t[hd][^>]*>sparsity</t[hd]>", pruned) and "60.00%" in pruned
    assert "sparsity: 60.0% unstructured" in html.unescape(pruned)


def test_new_experiment_like_this_has_absolute_paths(tmp_path, monkeypatch):
    """A run started in proj/ with relative paths (``--model model.onnx --data calib --output
    runs/rel``): the form gets proj/... paths, whichever folder the dashboard runs in."""
    proj = tmp_path / "proj"
    (proj / "calib").mkdir(parents=True)
    (proj / "model.onnx").write_bytes(b"onnx")
    report = make_report("quantization-only", name="rel")
    report.experiment.update(model="model.onnx", data="calib", output="runs/rel", teacher="resnet50")
    write_run(proj / "runs" / "rel", report)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    client = TestClient(create_app([str(proj / "runs")], None, None), base_url=BASE)
    page = client.get("/runs/0/rel").text
    link = html.unescape(re.search(r'href="(/new\?[^"]+)" id="like-link"', page).group(1))
    form = client.get(link).text
    assert f'id="f-model" name="model" value="{proj / "model.onnx"}"' in form
    assert f'id="f-data" name="data" value="{proj / "calib"}"' in form
    assert f'id="f-output" name="output" value="{proj / "runs" / "rel"}"' in form
    assert 'id="f-teacher" name="teacher" value="resnet50"' in form  # a name stays a name


def test_sweep_points_latency_header_says_median(tmp_path):
    sweep = tmp_path / "runs" / "sw"
    write_run(sweep / "p-020-u", make_report("quantization-only"))
    point = {"name": "p-020-u", "optimLevel": 0.2, "structure": "unstructured", "phase": "Succeeded",
             "latencyMs": 1.25, "speedup": 1.6, "sizeBytes": 52_000}  # fmt: skip
    (sweep / "sweep.json").write_text(
        json.dumps({"phase": "Succeeded", "summary": "1 of 1", "points": [point]})
    )
    client = TestClient(create_app([str(tmp_path / "runs")], None, None), base_url=BASE)
    entries = re.findall(r'<tr data-key="([^"]+)"', client.get("/").text)
    key = next(k for k in entries if k.endswith("/sw") or k == "0/sw")
    page = client.get(f"/sweeps/{key}").text
    assert "<th>median latency</th>" in page and ">1.25 ms<" in page and ">52.0 KB<" in page
