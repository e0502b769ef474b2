"""One-shot end to end with s3:// URIs through the real CLIs: published artifacts and
marker, the download cache on a second run, a retried run reusing the finished result,
final metrics in the Pushgateway."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rio_helpers import (
    ACCESS_KEY,
    FAST_RECIPE,
    SECRET_KEY,
    http_get,
    keys,
    mkey,
    parse_metrics,
    read_summary,
    runner_cmd,
)

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, output: str) -> Path:
    path = tmp_path / f"exp-{hashlib.md5(output.encode()).hexdigest()[:6]}.json"
    path.write_text(
        json.dumps(
            {
                "name": "tiny-oneshot",
                "type": "one-shot",
                "useCase": "custom",
                "model": "s3://models/tiny/model.onnx",
                "data": "s3://datasets/calib/",
                "optimLevel": 0.5,
                "recipeArgs": FAST_RECIPE,
                "output": output,
            }
        )
    )
    return path


def _env(s3env, tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARSIFY_", "AWS_"))}
    env.update(s3env)
    env.update(OMP_NUM_THREADS="2", SPARSIFY_TERMINATION_LOG=str(tmp_path / "termination-log"), **extra)
    return env


def test_one_shot_with_s3_uris(s3, s3env, tmp_path, one_shot_inputs, pushgateway):
    import onnxruntime as ort

    env = _env(s3env, tmp_path, SPARSIFY_PUSHGATEWAY_URL=pushgateway, SPARSIFY_EXPERIMENT_NAMESPACE="ml")
    first = subprocess.run(
        [*runner_cmd(), "run", "--quiet", "--experiment", str(_spec(tmp_path, "s3://results/a"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]

    assert keys(s3, "results") == [
        "a/_SUCCESS.json",
        "a/model.onnx",
        "a/model_repository/tiny-oneshot/1/model.onnx",
        "a/model_repository/tiny-oneshot/config.pbtxt",
        "a/report.html",
        "a/report.json",
    ]
    marker = json.loads(s3.get_object(Bucket="results", Key="a/_SUCCESS.json")["Body"].read())
    model_bytes = s3.get_object(Bucket="results", Key="a/model.onnx")["Body"].read()
    assert marker["files"]["model.onnx"] == {
        "size": len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    report_text = s3.get_object(Bucket="results", Key="a/report.json")["Body"].read().decode()
    assert SECRET_KEY not in report_text and ACCESS_KEY not in report_text
    report = json.loads(report_text)
    assert report["artifacts"]["model"] == "s3://results/a/model.onnx"
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 8, 8), np.float32)})[0].shape == (1, 4)

    summary = read_summary(tmp_path / "termination-log")
    assert summary["status"] == "succeeded" and summary["modelUri"] == "s3://results/a/model.onnx"
    assert summary["optimizedSizeBytes"] == report["optimized"]["file_size_bytes"]

    group = dict(experiment="tiny-oneshot", instance="", job="sparsify-runner", namespace="ml")
    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    assert pushed[mkey("sparsify_run_success", **group)] == 1
    assert pushed[mkey("sparsify_storage_downloaded_objects_total", **group)] == 25  # model + 24 samples
    assert pushed[mkey("sparsify_model_size_bytes", model="optimized", **group)] == len(model_bytes)
    assert pushed[mkey("sparsify_model_latency_seconds", model="baseline", **group)] > 0

    # Second run (sparsifyctl, another output): every input comes from the cache.
    second = subprocess.run(
        [
            sys.executable,
            "-c",
            "from sparsifyctl.cli import main; main()",
            "run",
            "one-shot",
            "--use-case",
            "custom",
            "--name",
            "tiny-oneshot",
            "--model",
            "s3://models/tiny/model.onnx",
            "--data",
            "s3://datasets/calib/",
            "--optim-level",
            "0.5",
            "--recipe-args",
            json.dumps(FAST_RECIPE),
            "-o",
            "s3://results/b",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    assert pushed[mkey("sparsify_storage_cache_hits_total", **group)] == 2
    assert pushed[mkey("sparsify_storage_downloaded_objects_total", **group)] == 0
    assert "b/_SUCCESS.json" in keys(s3, "results")

    # A retried pod of the first experiment finds the finished result and does not redo it.
    (tmp_path / "termination-log").unlink()
    retried = subprocess.run(
        [*runner_cmd(), "run", "--quiet", "--experiment", str(_spec(tmp_path, "s3://results/a"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "already at" in retried.stderr
    again = json.loads(s3.get_object(Bucket="results", Key="a/_SUCCESS.json")["Body"].read())
    assert again["runId"] == marker["runId"]
    assert read_summary(tmp_path / "termination-log")["modelUri"] == "s3://results/a/model.onnx"
