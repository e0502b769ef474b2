"""Multi-process training under torchrun (DistributedDataParallel, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import yaml
from conftest import FAST_TIMINGS
from helpers import report

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow


def test_torchrun_two_processes_structured_with_qat(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    spec = tmp_path / "experiment.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "type": "training-aware",
                "useCase": "image-classification",
                "model": str(cnn_checkpoint),
                "data": str(image_data),
                "optimLevel": 0.6,
                "structure": "channels",
                "trainKwargs": {"epochs": 3, "dense_epochs": 1, "batch_size": 4, "checkpoint_every": 2},
                "recipeArgs": FAST_TIMINGS,
                "output": str(out),
            }
        )
    )
    term = tmp_path / "termination.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sparsify_runner.cli",
        "run",
        "--experiment",
        str(spec),
        "--termination-log",
        str(term),
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = report(out)
    assert r["mode"] == "channels"
    # 30 training images, batch 4 per process, 2 processes: 4 steps per epoch (8 alone)
    main = [e for e in r["training"] if e["phase"] == "main"]
    assert [e["step"] for e in main] == [4, 8, 12]
    assert r["training"][-1]["phase"] == "qat"
    assert r["optimized"]["flops"] < 0.8 * r["baseline"]["flops"]
    assert sorted(p.name for p in out.iterdir()) == [
        "_SUCCESS.json",
        "model.onnx",
        "model.pt",
        "model_repository",
        "report.html",
        "report.json",
    ]
    summary = json.loads(term.read_text())
    assert summary["status"] == "succeeded"
    sess = ort.InferenceSession(str(out / "model.onnx"))
    assert sess.get_inputs()[0].shape[1:] == [3, 32, 32]
