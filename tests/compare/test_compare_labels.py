"""``sparsifyctl compare`` as a newcomer reads it (issue 25): columns named by experiment,
median latencies said to be medians, sizes that keep their digits, sparsity only when pruned."""

from __future__ import annotations

import json
import re

from .conftest import run_cli
from .reports import make_report, write_run


def _skewed(report):
    """Mean latencies far from the medians, so a figure that is the mean is caught."""
    for side in (report.baseline, report.optimized):
        side.latency.mean_ms = round(side.latency.median_ms * 3 + 0.5, 4)
    return report


def test_runs_named_by_experiment_medians_sizes_and_sparsity(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    named = write_run(
        tmp_path / "2024-06-01-a",
        _skewed(make_report("quantization-only", speedup=1.6, size=45_300, name="int8-edge")),
    )
    named_report = json.loads((named / "report.json").read_text())
    named_report["optimized"]["sparsity"] = 0.0074  # INT8 weights rounded to zero
    (named / "report.json").write_text(json.dumps(named_report))
    unnamed = write_run(tmp_path / "pruned-run", _skewed(make_report("unstructured", speedup=2.5)))

    code, out, err = run_cli(["compare", str(named), str(unnamed), "--json"], capsys)
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert [r["label"] for r in runs] == ["int8-edge", str(unnamed)]  # the name, else the folder
    for run in runs:
        rep = run["report"]
        assert run["headline"]["baselineLatencyMs"] == rep["baseline"]["latency"]["median_ms"]
        assert run["headline"]["optimizedLatencyMs"] == rep["optimized"]["latency"]["median_ms"]
    assert runs[0]["headline"]["sparsity"] is None and runs[1]["headline"]["sparsity"] == 0.6

    code, out, err = run_cli(["compare", str(named), str(unnamed)], capsys)
    assert code == 0, err
    rows = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^│ ([^│]+?) +│(.*)$", out, re.M)}
    assert re.search(r"^┃ +┃ +int8-edge ┃", out, re.M), out  # the first column's header: the name
    assert f"int8-edge: {named / 'report.json'}" in out  # where the named column came from
    base_ms = make_report().baseline.latency.median_ms
    assert re.findall(r"[0-9.]+ ms", rows["baseline latency (median)"]) == [f"{base_ms:.2f} ms"] * 2
    assert re.findall(r"[0-9.]+ ms", rows["optimized latency (median)"]) == [
        f"{base_ms / 1.6:.2f} ms",
        f"{base_ms / 2.5:.2f} ms",
    ]
    assert "45.3 KB" in rows["file size"] and "2.00 MB" in rows["file size"]
    assert re.findall(r"\S+", rows["sparsity"].replace("│", " ")) == ["-", "60.00%"]

    page = tmp_path / "cmp.html"
    code, _, err = run_cli(["compare", str(named), str(unnamed), "--html", str(page)], capsys)
    assert code == 0, err
    text = page.read_text()
    assert '<th scope="col">int8-edge</th>' in text and "ms per batch, median" in text
