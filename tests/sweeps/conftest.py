"""Sweep test fixtures: a tiny ONNX classifier, npz samples, the CLI in-process, kmock."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

# the kmock harness of the operator tests (tests/operator is not a package)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

# short benchmarks: the sweep's logic is under test here, not the numbers
FAST = json.dumps({"benchmark_seconds": 0.1, "int8_candidate_seconds": 0.05})


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    ).eval()
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 3, 8, 8),), str(path), input_names=["x"], output_names=["y"],
        opset_version=17, dynamo=False,
    )
    return path


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        np.savez(folder / f"s{i:03d}.npz", x=rng.standard_normal((3, 8, 8)).astype(np.float32),
                 label=np.int64(i % 10))
    return folder


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The real ``sparsifyctl`` entry point in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.out, out.err
