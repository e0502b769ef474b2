"""A preempted pod resumes from checkpoints kept at the s3:// output: the real
training-aware pathway, SIGTERM mid-training, a second "pod" with an empty cache."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
from rio_helpers import keys, read_summary, runner_cmd

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def training_inputs(s3, tmp_path):
    """A 3-class colour ImageFolder and a simple_cnn checkpoint, uploaded to s3://train-in/."""
    import torch
    from PIL import Image
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    rng = random.Random(0)
    s3.create_bucket(Bucket="train-in")
    s3.create_bucket(Bucket="train-out")
    for split, n in (("train", 8), ("val", 3)):
        for cls, base in COLORS.items():
            for i in range(n):
                img = Image.new("RGB", (12, 12))
                img.putdata(
                    [tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in base) for _ in range(144)]
                )
                local = tmp_path / f"{split}-{cls}-{i}.png"
                img.save(local)
                s3.upload_file(str(local), "train-in", f"colors/{split}/{cls}/{i}.png")
    torch.manual_seed(0)
    ckpt = tmp_path / "cnn.pt"
    torch.save(
        {"state_dict": EXTRA_ARCHS["simple_cnn"](num_classes=10).state_dict(), "arch_key": "simple_cnn"}, ckpt
    )
    s3.upload_file(str(ckpt), "train-in", "models/cnn.pt")


def test_preempted_pod_resumes_from_s3_checkpoint(s3, s3env, tmp_path, training_inputs):
    spec = {
        "name": "resume",
        "type": "training-aware",
        "useCase": "image-classification",
        "model": "s3://train-in/models/cnn.pt",
        "data": "s3://train-in/colors/",
        "optimLevel": 0.5,
        "trainKwargs": {"epochs": 10, "batch_size": 4, "dense_epochs": 0, "checkpoint_every": 5},
        # short timing windows: the tiny model measures fine in them (the pods share this spec)
        "recipeArgs": {"benchmark_seconds": 0.3, "int8_candidate_seconds": 0.15},
        "output": "s3://train-out/resume",
    }
    exp = tmp_path / "exp.json"
    exp.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARSIFY_", "AWS_"))}
    env.update(s3env)
    env.update(
        OMP_NUM_THREADS="2",
        SPARSIFY_TERMINATION_LOG=str(tmp_path / "termination-log"),
        SPARSIFY_CACHE_DIR=str(tmp_path / "pod1-cache"),
    )
    cmd = [*runner_cmd(), "run", "--quiet", "--experiment", str(exp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    manifest = "resume/.sparsify-checkpoints/_CHECKPOINT.json"
    try:
        deadline = time.monotonic() + 180
        while manifest not in keys(s3, "train-out") and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint reached the output"
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert read_summary(tmp_path / "termination-log")["reason"] == "Preempted"
    remote = keys(s3, "train-out")
    assert "resume/model.onnx" not in remote and "resume/_SUCCESS.json" not in remote
    saved = json.loads(s3.get_object(Bucket="train-out", Key=manifest)["Body"].read())["files"]
    assert saved, "the checkpoint manifest lists files"

    # The replacement pod: another node, empty cache; it restores the checkpoint from S3.
    env["SPARSIFY_CACHE_DIR"] = str(tmp_path / "pod2-cache")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads(s3.get_object(Bucket="train-out", Key="resume/report.json")["Body"].read())
    assert any(note.startswith("resumed from a checkpoint") for note in report["notes"]), report["notes"]
    remote = keys(s3, "train-out")
    assert {"resume/model.onnx", "resume/report.json", "resume/_SUCCESS.json"} <= set(remote)
    assert not [k for k in remote if ".sparsify-checkpoints" in k or ".sparsify-staging" in k]
    assert read_summary(tmp_path / "termination-log")["status"] == "succeeded"
