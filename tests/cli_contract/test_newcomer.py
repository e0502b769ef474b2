"""What a newcomer hit (issue 25), through the real ``sparsifyctl`` entry point: ``generate``
with named models and datasets, its GPU default and help; the terminal summary's metric,
sizes and sparsity."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import ONESHOT_FAST, assert_bad, report, run_cli

S3 = ["--output", "s3://bucket/runs/exp1"]


def _generate(capsys, *argv: str) -> dict:
    code, out, err = run_cli(["generate", *argv], capsys)
    assert code == 0, err
    return yaml.safe_load(out)


# ---- generate: names, local paths, output ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag", "what"),
    [
        (
            ["one-shot", "--use-case", "ic", "--model", "resnet50", "--data", "s3://d/calib/"],
            "--model",
            "model",
        ),
        (
            ["training-aware", "--use-case", "text-classification", "--model", "bert-base-uncased",
             "--data", "s3://d/sst2/"],
            "--model",
            "model",
        ),
        (
            ["training-aware", "--use-case", "ic", "--model", "s3://m/r.pt", "--arch", "resnet18",
             "--data", "imagenette"],
            "--data",
            "dataset",
        ),
        (
            ["training-aware", "--use-case", "ic", "--model", "s3://m/r.pt", "--arch", "resnet18",
             "--data", "s3://d/i/", "--teacher", "resnet50"],
            "--teacher",
            "model",
        ),
    ],
)  # fmt: skip
def test_generate_names_are_said_to_be_unsupported_on_a_cluster(argv, flag, what, capsys):
    value = argv[argv.index(flag) + 1]
    line = assert_bad(["generate", *argv, *S3], capsys, f"{flag} '{value}' is a {what} name")
    assert "not supported on a cluster yet" in line and "sparsifyctl run" in line
    assert f"pass {flag} s3://" in line
    assert "local path" not in line  # the words that were wrong for a name


def test_generate_local_paths_and_output_name_the_flag(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    base = ["generate", "one-shot", "--use-case", "ic", "--data", "s3://d/calib/"]
    line = assert_bad([*base, "--model", str(model), *S3], capsys, f"--model '{model}' is a local path")
    assert "cluster Job cannot read" in line and "pass --model s3://" in line
    line = assert_bad([*base, "--model", "s3://m/m.onnx"], capsys, "--output is missing")
    assert "must be an s3:// prefix" in line
    assert_bad(
        [*base, "--model", "s3://m/m.onnx", "-o", "out/exp"], capsys, "--output 'out/exp' must be an s3://"
    )
    assert_bad(
        [*base, "--model", "s3://m/m.onnx", "--working-dir", "runs"], capsys, "--working-dir 'runs' must be"
    )
    # --working-dir with an s3:// prefix is what generate accepts
    doc = _generate(capsys, "one-shot", "--use-case", "ic", "--model", "s3://m/m.onnx", "--data", "s3://d/",
                    "--working-dir", "s3://bucket/runs", "--name", "exp2")  # fmt: skip
    assert doc["spec"]["experiment"]["output"] == "s3://bucket/runs/exp2"


# ---- generate: GPUs and help -------------------------------------------------------------------


ONE_SHOT = ["one-shot", "--use-case", "ic", "--model", "s3://m/m.onnx", "--data", "s3://d/calib/", *S3]
TRAINING = ["training-aware", "--use-case", "ic", "--model", "s3://m/r.pt", "--arch", "resnet18",
            "--data", "s3://d/imagenette/", *S3]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "gpus"),
    [
        (ONE_SHOT, 0),  # one-shot for a CPU deploy target: calibration and benchmark on the CPU
        ([*ONE_SHOT, "--deploy-device", "cuda"], 1),
        (TRAINING, 1),
        (["sparse-transfer", "--use-case", "ic", "--data", "s3://d/i/", *S3], 1),
        ([*ONE_SHOT, "--gpus", "2"], 2),  # an explicit --gpus always wins
        ([*TRAINING, "--gpus", "0"], 0),
        ([*ONE_SHOT, "--sweep", "--optim-levels", "0.2,0.5"], 0),
    ],
)
def test_generate_gpu_default_follows_the_experiment(argv, gpus, capsys):
    spec = _generate(capsys, *argv)["spec"]
    assert spec.get("template", spec)["gpus"] == gpus  # a SparsifySweep's children: its template


def test_generate_help_describes_what_generate_accepts(capsys):
    code, out, _ = run_cli(["generate", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    for flag in ("-o, --output", "--working-dir", "--model", "--data"):
        assert flag in text
    # run's "(default: the current folder)" is rejected by generate: not in its help
    assert "current folder" not in text
    assert "Required (or --working-dir): the s3:// prefix" in text
    assert "--working-dir <str> An s3:// prefix" in text
    assert "Default: 0 for one-shot with a cpu deploy target" in text
    # run's help keeps its own words
    code, out, _ = run_cli(["run", "--help"], capsys)
    assert code == 0 and "current folder" in " ".join(out.split())


# ---- the terminal summary ----------------------------------------------------------------------


def test_summary_shows_the_chosen_metric_sizes_and_no_int8_sparsity(
    tiny_onnx, calib, tmp_path, monkeypatch, capsys
):
    """An INT8-only run (level 0.2) with --eval-metric f1 on a ~10 KB model: the table's headline
    is macro F1, sizes are in KB (not "0.01 -> 0.00 MB"), and no sparsity row (INT8 rounding
    zeros are not a result)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("SPARSIFY_NO_PROGRESS", "1")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["run", "one-shot", "--use-case", "ic", "--model", str(tiny_onnx), "--data", str(calib),
         "--recipe-args", json.dumps(ONESHOT_FAST), "-o", str(out), "--optim-level", "0.2",
         "--eval-metric", "f1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    r = report(out)
    assert r["mode"] in ("quantization-only", "baseline")
    rows = {m.group(1).strip(): m.group(2) for m in re.finditer(r"^│ ([^│]+?) +│(.*)$", stdout, re.M)}
    assert "macro F1 (held-out)" in rows, stdout
    f1 = r["optimized"]["f1"]
    assert f"{f1:.2%}" in rows["macro F1 (held-out)"]
    assert not any(name.startswith("accuracy") for name in rows), stdout
    assert "sparsity" not in rows, stdout
    for name, key in (("file size", "file_size_bytes"), ("gzip size", "compressed_size_bytes")):
        cells = rows[name]
        assert r["baseline"][key] < 1_000_000 and "MB" not in cells, cells
        sizes = re.findall(r"([0-9]+\.[0-9]) KB", cells)
        assert [float(s) for s in sizes[:2]] == [
            round(r["baseline"][key] / 1e3, 1),
            round(r["optimized"][key] / 1e3, 1),
        ], cells
