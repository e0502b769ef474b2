"""``sparsifyctl sweep`` end to end on a tiny ONNX model, in-process through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import FAST, run_cli

pytestmark = pytest.mark.timeout(300)


def _sweep(tiny_onnx: Path, data: Path, out: Path, capsys, *extra: str):
    return run_cli(
        [
            "sweep",
            "one-shot",
            "--use-case",
            "my-sensor",
            "--model",
            str(tiny_onnx),
            "--data",
            str(data),
            "--output",
            str(out),
            "--recipe-args",
            FAST,
            "--quiet",
            *extra,
        ],
        capsys,
    )


def test_three_points_then_resume_reruns_nothing(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, stderr = _sweep(tiny_onnx, samples, out, capsys, "--optim-levels", "0,0.2,0.5",
                                  "--max-accuracy-drop", "1")
    assert code == 0, stderr
    names = ["optim-000-u", "optim-020-u", "optim-050-u"]
    result = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in result["points"]] == names
    assert result["phase"] == "Succeeded" and result["summary"] == "3/3 succeeded"
    for p, level in zip(result["points"], (0.0, 0.2, 0.5), strict=True):
        assert p["phase"] == "Succeeded" and p["reused"] is False and p["optimLevel"] == level
        folder = out / p["name"]
        report = json.loads((folder / "report.json").read_text())
        assert report["experiment"]["optimLevel"] == level, "each point ran its own level"
        assert p["modelUri"] == str(folder / "model.onnx") and (folder / "_SUCCESS.json").is_file()
        assert p["latencyMs"] == report["optimized"]["latency"]["median_ms"]
        assert p["sizeBytes"] == report["optimized"]["file_size_bytes"]
        assert p["accuracy"] == report["optimized"]["accuracy"]
    modes = [json.loads((out / n / "report.json").read_text())["mode"] for n in names]
    # each point ships what measured faster within its budget (on the tiny CNN maybe nothing)
    assert modes[0] == "baseline" and modes[1] in ("baseline", "quantization-only")
    assert modes[2] in ("baseline", "quantization-only", "channels")
    # best: the highest measured speedup (budget 1 = any accuracy)
    fastest = max(result["points"], key=lambda p: (p["speedup"], p["accuracy"], -p["optimLevel"]))
    assert result["best"]["name"] == fastest["name"]
    assert f"best: {fastest['name']}" in stdout
    assert result["pareto"]["latency"] and set(result["pareto"]["latency"]) <= set(names)
    assert "pareto accuracy vs size:" in stdout and f"wrote {out}/sweep.json" in stdout

    marks = {n: (out / n / "_SUCCESS.json").stat().st_mtime_ns for n in names}
    reports = {n: (out / n / "report.json").read_bytes() for n in names}
    # again, plus one new level: the finished points are reused, only the new one runs
    code, stdout, stderr = _sweep(tiny_onnx, samples, out, capsys, "--optim-levels", "0,0.2,0.5,0.8")
    assert code == 0, stderr
    again = json.loads((out / "sweep.json").read_text())
    assert [p["reused"] for p in again["points"]] == [True, True, True, False]
    for n in names:
        assert (out / n / "_SUCCESS.json").stat().st_mtime_ns == marks[n], f"{n} was re-run"
        assert (out / n / "report.json").read_bytes() == reports[n]
        assert f"point {n}: Succeeded (reused the finished result)" in stderr
    assert (out / "optim-080-u" / "_SUCCESS.json").is_file()
    assert again["points"][:3] == [{**p, "reused": True} for p in result["points"]]


def test_failed_points_are_recorded_not_raised(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "sweep"
    # channel pruning has no magnitude variant: those points fail (exit 2), the sweep does not
    code, stdout, stderr = _sweep(tiny_onnx, samples, out, capsys, "--optim-levels", "0.2",
                                  "--structure", "unstructured,channels", "--pruning-method", "magnitude")
    assert code == 0, stderr
    result = json.loads((out / "sweep.json").read_text())
    ok, bad = result["points"]
    assert ok["name"] == "optim-020-u" and ok["phase"] == "Succeeded"
    assert bad["name"] == "optim-020-c" and bad["phase"] == "Failed"
    assert bad["message"].startswith("exit 2:") and "channels" in bad["message"]
    assert result["summary"] == "1/2 succeeded, 1 failed (optim-020-c)"
    assert not (out / "optim-020-c").exists(), "a failed point publishes nothing"


def test_all_points_failing_fails_with_exit_2(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, stderr = _sweep(tiny_onnx, samples, out, capsys, "--optim-levels", "0.2,0.5",
                                  "--structures", "channels", "--pruning-method", "magnitude")
    assert code == 2
    assert "error: all 2 points failed" in stderr
    assert json.loads((out / "sweep.json").read_text())["phase"] == "Failed"


def test_parallel_points_in_worker_processes(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, stderr = _sweep(tiny_onnx, samples, out, capsys, "--optim-levels", "0,0.2",
                                  "--parallel", "2")
    assert code == 0, stderr
    result = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in result["points"]] == ["optim-000-u", "optim-020-u"], "grid order kept"
    assert [p["phase"] for p in result["points"]] == ["Succeeded", "Succeeded"]
    for p in result["points"]:
        assert json.loads((out / p["name"] / "report.json").read_text())["experiment"]["optimLevel"] == (
            p["optimLevel"]
        )


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--optim-levels", "0.2,1.5"], "--optim-levels: 1.5 is out of range"),
        (["--optim-levels", ","], "--optim-levels is empty"),
        (["--optim-levels", "0.2", "--structures", "rows"], "--structures: unknown structure 'rows'"),
        (["--optim-levels", "0.2", "--parallel", "0"], "--parallel must be at least 1"),
        (["--optim-levels", "0.2", "--objective", "fast"], "--objective"),
        (["--optim-levels", "0.2", "--max-accuracy-drop", "2"], "--max-accuracy-drop"),
        ([], "missing --optim-levels"),
    ],
)
def test_bad_values_are_one_line_exit_2(extra, msg, tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, stderr = _sweep(tiny_onnx, samples, out, capsys, *extra)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], stderr
    assert not out.exists(), "nothing is written for bad input"
