"""Runs that survive: SIGTERM mid-training -> checkpoint + exit 143; rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import sparsifyctl, with_fast_timings
from helpers import report

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow


def _start(image_data: Path, ckpt: Path, out: Path, kwargs: dict) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from sparsifyctl.cli import main; main()",
    ]
    cmd += with_fast_timings((
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(ckpt),
        "--data",
        str(image_data),
        "--optim-level",
        "0.5",
        "--train-kwargs",
        json.dumps(kwargs),
        "-o",
        str(out),
        "--quiet",
    ))  # fmt: skip  (the same settings as the rerun through sparsifyctl: the checkpoint must match)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


def test_sigterm_checkpoints_and_rerun_resumes(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    kwargs = {"epochs": 20, "batch_size": 4, "dense_epochs": 0, "checkpoint_every": 5}
    proc = _start(image_data, cnn_checkpoint, out, kwargs)
    main_ckpt = out / ".sparsify-checkpoints" / "main.pt"
    deadline = time.monotonic() + 120
    while not main_ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert main_ckpt.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "resume" in err
    assert not (out / "model.onnx").exists(), "an interrupted run must not publish a model"
    saved = torch.load(main_ckpt, weights_only=True)  # plain data only
    stopped_at = saved["step"]
    assert 0 < stopped_at < 20 * 8
    assert {"model", "optimizer", "modifiers", "rng", "history"} <= set(saved)
    assert saved["modifiers"]["0.GMPModifier"]["masks"]

    proc2 = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(cnn_checkpoint),
        "--data",
        str(image_data),
        "--optim-level",
        "0.5",
        "--train-kwargs",
        json.dumps(kwargs),
        "-o",
        str(out),
        "--quiet",
    )
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    r = report(out)
    assert f"resumed from a checkpoint at step {stopped_at} of 160" in r["notes"]
    assert [e for e in r["training"] if e["phase"] == "main"][-1]["step"] == 160
    assert not (out / ".sparsify-checkpoints").exists()


def test_checkpoint_of_another_spec_is_ignored(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    kwargs = {"epochs": 20, "batch_size": 4, "dense_epochs": 0, "checkpoint_every": 5}
    proc = _start(image_data, cnn_checkpoint, out, kwargs)
    main_ckpt = out / ".sparsify-checkpoints" / "main.pt"
    deadline = time.monotonic() + 120
    while not main_ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143
    # same output, different spec (optim level): start fresh, say so
    proc2 = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(cnn_checkpoint),
        "--data",
        str(image_data),
        "--optim-level",
        "0.7",
        "--train-kwargs",
        json.dumps({**kwargs, "epochs": 2}),
        "-o",
        str(out),
        "--quiet",
    )
    assert proc2.returncode == 0, proc2.stderr[-2000:]
    notes = report(out)["notes"]
    assert any("different experiment spec" in n for n in notes)
    assert not any(n.startswith("resumed") for n in notes)
