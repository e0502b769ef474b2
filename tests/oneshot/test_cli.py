"""End to end through the real entry points: ``sparsifyctl run one-shot`` and ``sparsify-runner run``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from .conftest import FAST, export, run_cli, write_samples


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
            *extra,
        ],
        capsys,
    )


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_level_0_returns_baseline_unchanged(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = _run(tiny_onnx, samples, out, 0.0, capsys)
    assert code == 0, stderr
    assert (out / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    rep = _report(out)
    assert rep["mode"] == "baseline" and rep["candidates"] == []
    assert rep["fidelity"]["top1_agreement"] == 1.0
    assert rep["baseline"]["accuracy"] == rep["optimized"]["accuracy"]
    assert rep["experiment"]["useCase"] == "my-custom-sensor"
    assert "baseline" in stdout and "unchanged" in rep["speedup_source"]


def test_level_02_searches_int8_ships_only_a_faster_model(tiny_onnx, samples, tmp_path, capsys):
    """Level 0.2: INT8 candidates only (no pruning), judged against the baseline on the level's
    0.5-point budget; the shipped model is an INT8 one that measured faster, or the baseline
    byte for byte (reported as unchanged, never as faster or slower)."""
    out = tmp_path / "out"
    code, stdout, stderr = _run(tiny_onnx, samples, out, 0.2, capsys)
    assert code == 0, stderr
    rep = _report(out)
    policy = rep["policy"]
    assert policy["max_accuracy_drop"] == pytest.approx(0.005) and policy["objective"] == "speed"
    assert policy["search_space"] == {"int8": True, "macs_reductions": [], "sparsities": []}
    stages = {c["stage"] for c in rep["candidates"]}
    assert stages == {"baseline", "int8"}, stages
    chosen = [c for c in rep["candidates"] if c["chosen"]]
    assert len(chosen) <= 1 and len(rep["candidates"]) >= 4
    assert all(c["accuracy_drop"] is not None for c in rep["candidates"])
    assert any(c["pareto"] for c in rep["candidates"])
    assert rep["settings"]["holdout_samples"] == 8 and rep["settings"]["holdout_disjoint"]
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    quantized = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert quantized == bool(chosen)
    if quantized:
        assert rep["mode"] == "quantization-only"
        assert chosen[0]["accuracy_drop"] <= 0.005 and rep["speed"]["verdict"] == "faster"
    else:  # the honest fallback: the input's bytes, 1.00x, and a note saying why
        assert rep["mode"] == "baseline"
        assert (out / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
        assert rep["speedup"] == 1.0 and rep["speed"]["verdict"] == "identical model"
        assert any("no candidate was both within the accuracy budget" in n for n in rep["notes"])
    assert "latency median" in stdout
    # the tiny CNN's Conv -> Relu -> depthwise Conv chain is equalized before any candidate
    assert any("equalized the channel ranges of 1 conv -> depthwise" in n for n in rep["notes"])


def test_int8_equalization_can_be_switched_off(tiny_onnx, samples, tmp_path, capsys):
    out = tmp_path / "out"
    recipe = json.dumps({**json.loads(FAST), "int8_equalization": False})
    code, _, stderr = _run(tiny_onnx, samples, out, 0.2, capsys, "--recipe-args", recipe)
    assert code == 0, stderr
    rep = _report(out)
    assert rep["settings"]["recipe"]["int8_equalization"] is False
    assert not any("equalized" in n for n in rep["notes"])


def test_size_objective_searches_unstructured_sparsity(tiny_onnx, samples, tmp_path, capsys):
    """--objective size at level 0.5: unstructured sparsities 30/40/50% (no channels: they buy
    speed), the smallest within the budget ships; --max-accuracy-drop widens the budget."""
    out = tmp_path / "out"
    recipe = json.dumps({**json.loads(FAST), "pruning_allocation": "sensitivity", "quantize": False})
    code, stdout, stderr = _run(
        tiny_onnx, samples, out, 0.5, capsys, "--pruning-method", "magnitude", "--objective", "size",
        "--max-accuracy-drop", "1", "--recipe-args", recipe,
    )  # fmt: skip
    assert code == 0, stderr
    rep = _report(out)
    assert rep["policy"]["search_space"]["sparsities"] == [0.3, 0.4, 0.5]
    assert rep["policy"]["search_space"]["macs_reductions"] == []
    assert rep["policy"]["budget_source"] == "--max-accuracy-drop"
    assert rep["mode"] == "unstructured"
    assert rep["settings"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert rep["optimized"]["sparsity"] > 0.2 and rep["baseline"]["sparsity"] == 0.0
    assert rep["optimized"]["compressed_size_bytes"] < rep["baseline"]["compressed_size_bytes"]
    assert any(ly["sparsity"] > 0 for ly in rep["layers"])
    assert "unstructured sparsity" in rep["speedup_source"] and "no speed" in rep["speedup_source"]
    assert any("compressed size" in n for n in rep["notes"])
    assert any("allocated by measured sensitivity" in n for n in rep["notes"])
    assert rep["fidelity"]["samples"] == 8 and 0 <= rep["fidelity"]["cosine_similarity"] <= 1.0001
    from sparsify_runner.evaluate import run_onnx

    assert run_onnx(out / "model.onnx", [{"x": np.zeros((3, 16, 16), np.float32)}])[0].shape == (10,)


def test_runner_experiment_file_same_path(tiny_onnx, tmp_path, capsys):
    from sparsify_runner.cli import app
    from typer.testing import CliRunner

    data = write_samples(tmp_path / "nolabels", 12, labels=False)
    out = tmp_path / "out"
    exp = {
        "type": "one-shot",
        "useCase": "ic",
        "model": str(tiny_onnx),
        "data": str(data),
        "optimLevel": 0.0,
        "output": str(out),
        "recipeArgs": json.loads(FAST),
    }
    (tmp_path / "exp.yaml").write_text(json.dumps(exp))
    result = CliRunner().invoke(app, ["run", "--experiment", str(tmp_path / "exp.yaml"), "--quiet"])
    assert result.exit_code == 0, result.output
    rep = _report(out)
    assert rep["baseline"]["accuracy"] is None and rep["fidelity"]["samples"] == 2


# ---- bad input: exit 2, one line on stderr, nothing written ------------------------------
def _bad_cases(
    tmp: Path, tiny_onnx: Path, dynamic_onnx: Path, samples: Path
) -> dict[str, tuple[list[str], str]]:
    junk = tmp / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf at all" * 20)
    unreadable = tmp / "locked.onnx"
    unreadable.write_bytes(tiny_onnx.read_bytes())
    unreadable.chmod(0)
    empty = tmp / "empty"
    empty.mkdir()
    names = write_samples(tmp / "names", 3, name="image")
    shapes = write_samples(tmp / "shapes", 3, shape=(3, 32, 32))

    def args(model: Path, data: Path, level: str = "0.2", kind: str = "one-shot") -> list[str]:
        return [
            "run",
            kind,
            "--use-case",
            "ic",
            "--model",
            str(model),
            "--data",
            str(data),
            "--optim-level",
            level,
        ]

    return {
        "missing model": (args(tmp / "nope.onnx", samples), "does not exist"),
        "unreadable model": (args(unreadable, samples), "cannot be read"),
        "not onnx": (args(junk, samples), "not an ONNX model"),
        "dynamic shapes": (args(dynamic_onnx, samples), "dynamic shape"),
        "missing data": (args(tiny_onnx, tmp / "nodata"), "does not exist"),
        "npz names": (args(tiny_onnx, names), "missing input(s) 'x'"),
        "npz shapes": (args(tiny_onnx, shapes), "expected shape (3, 16, 16)"),
        "empty data": (args(tiny_onnx, empty), "no .npz files"),
        "optim level": (args(tiny_onnx, samples, level="1.5"), "--optim-level 1.5: must be in [0, 1]"),
        "experiment type": (args(tiny_onnx, samples, kind="two-shot"), "unknown experiment type"),
        "recipe key": (args(tiny_onnx, samples) + ["--recipe-args", '{"bogus": 1}'], "'bogus'"),
        "recipe value": (
            args(tiny_onnx, samples) + ["--recipe-args", '{"int8_equalization": "yes"}'],
            "'int8_equalization' must be true or false",
        ),
        "allocation": (
            args(tiny_onnx, samples) + ["--recipe-args", '{"pruning_allocation": "owl"}'],
            "'pruning_allocation' must be erk or sensitivity",
        ),
    }


def test_bad_inputs_exit_2_one_line_nothing_written(tiny_onnx, dynamic_onnx, samples, tmp_path, capsys):
    import os

    cases = _bad_cases(tmp_path, tiny_onnx, dynamic_onnx, samples)
    for name, (argv, expected) in cases.items():
        if name == "unreadable model" and os.geteuid() == 0:
            continue  # root reads anything
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        code, _, stderr = run_cli(argv + ["--output", str(out)], capsys)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert code == 2, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr)
        assert expected in lines[0], (name, lines[0])
        assert not out.exists() or not any(out.iterdir()), name


def test_interrupted_run_leaves_no_model(tiny_onnx, samples, tmp_path, monkeypatch, capsys):
    import sparsify_runner.benchmark as bench

    def boom(*args, **kwargs):  # after model.onnx was staged, before publishing
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "measure_latency", boom)
    out = tmp_path / "out"
    code, _, stderr = _run(tiny_onnx, samples, out, 0.0, capsys)
    assert code == 130 and "nothing was published" in stderr
    assert not (out / "model.onnx").exists() and not (out / "report.json").exists()


def test_benchmark_and_compare_commands(tiny_onnx, samples, tmp_path, capsys):
    code, stdout, stderr = run_cli(
        ["benchmark", str(tiny_onnx), "--compare", str(tiny_onnx), "--time", "0.1", "--json"], capsys
    )
    assert code == 0, stderr
    payload = json.loads(stdout)
    assert len(payload["models"]) == 2 and payload["speedup"] > 0
    code, stdout, _ = run_cli(["benchmark", str(tiny_onnx), "--scenario", "async", "--time", "0.1"], capsys)
    assert code == 0 and "throughput (items/sec)" in stdout and "latency p90" in stdout
    code, _, stderr = run_cli(["benchmark", str(tmp_path / "missing.onnx")], capsys)
    assert code == 2 and "does not exist" in stderr

    out = tmp_path / "out"
    assert _run(tiny_onnx, samples, out, 0.0, capsys)[0] == 0
    code, stdout, _ = run_cli(["compare", str(out), str(out / "report.json")], capsys)
    assert code == 0 and "speedup" in stdout and "baseline" in stdout
    code, _, stderr = run_cli(["compare", str(tmp_path / "none")], capsys)
    assert code == 2 and "does not exist" in stderr


def test_wide_classifier_is_held_at_its_sparsity_cap(samples, tmp_path, capsys):
    """At level 1.0 (80% target) the ERK rule alone would prune a wide classifier past 80%:
    its Hessian has one row per sample, so the allocation holds it at the cap and the conv
    takes the rest of the budget (measured on MobileNetV2: the over-pruned classifier was
    most of the one-shot damage)."""
    import torch

    torch.manual_seed(0)
    wide = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 256, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 1000),
    ).eval()
    model = export(wide, tmp_path / "wide.onnx")
    out = tmp_path / "out"
    recipe = json.dumps({**json.loads(FAST), "sparsity": 0.8, "quantize": False})
    code, _, stderr = _run(
        model, samples, out, 1.0, capsys, "--pruning-method", "magnitude", "--objective", "size",
        "--max-accuracy-drop", "1", "--recipe-args", recipe,
    )  # fmt: skip
    assert code == 0, stderr
    rep = _report(out)
    assert rep["settings"]["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    pruned = [ly for ly in rep["layers"] if ly["sparsity"] > 0]
    by_op = {ly["op_type"]: ly for ly in pruned}
    assert "classifier" in by_op["Gemm"]["note"]
    assert by_op["Gemm"]["sparsity"] == pytest.approx(0.8, abs=1e-3)  # 0.82 without the cap
    assert by_op["Conv"]["sparsity"] > 0.8


def test_timings_on_a_contended_cpu_say_so(tiny_onnx, samples, tmp_path, capsys, monkeypatch):
    """Other processes take the CPUs while timing (/proc/stat's busy time grows far more than
    this process's own CPU time): the benchmark command and the one-shot report both say the
    speed figures were taken on a contended machine; when only this process was busy, nothing."""
    import itertools

    from sparsify_runner import benchmark

    busy = itertools.count(0.0, 100.0)  # 100 CPU seconds of others per read: far above the wall time
    monkeypatch.setattr(benchmark, "_cpu_seconds", lambda: (next(busy), 0.0, 2))
    bench = ["benchmark", str(tiny_onnx), "--compare", str(tiny_onnx), "--time", "0.1"]
    code, _, stderr = run_cli(bench, capsys)
    assert code == 0 and "the CPU was contended while timing" in stderr
    out = tmp_path / "busy"
    assert _run(tiny_onnx, samples, out, 0.2, capsys)[0] == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["baseline"]["latency"]["others_cpu_share"] == 1.0
    if rep["mode"] != "baseline":
        assert any("contended" in n for n in rep["notes"])
    else:  # the identical model is 1.00x whatever the load: nothing to warn about
        assert not any("contended" in n for n in rep["notes"])

    own = itertools.count(0.0, 100.0)  # all the busy time is this process's own
    monkeypatch.setattr(benchmark, "_cpu_seconds", lambda: (t := next(own), t, 2))
    code, _, stderr = run_cli(bench, capsys)
    assert code == 0 and "contended" not in stderr


def test_the_cpu_share_of_other_processes_is_read_from_proc_stat():
    from sparsify_runner.benchmark import _cpu_seconds, _others_share

    snap = _cpu_seconds()
    if snap is None:
        pytest.skip("no /proc/stat on this system")
    assert snap[0] > 0 and snap[1] > 0 and snap[2] >= 1
    assert _others_share((10.0, 4.0, 2), (14.0, 6.0, 2), 2.0) == 0.5  # others: 2 of 4 CPU-seconds
    assert _others_share((10.0, 4.0, 2), (12.0, 6.0, 2), 2.0) == 0.0  # all busy time was our own
    assert _others_share(None, snap, 1.0) is None
