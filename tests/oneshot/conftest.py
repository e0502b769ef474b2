"""Tiny models and sample folders for the one-shot tests (built here, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FAST = json.dumps({"benchmark_seconds": 0.2, "int8_candidate_seconds": 0.1, "candidate_seconds": 0.2})


def _tiny_cnn(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1, groups=32),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()


def export(model, path: Path, shape=(1, 3, 16, 16), dynamic: bool = False) -> Path:
    import torch

    kwargs = {"dynamic_axes": {"x": {0: "batch", 2: "h", 3: "w"}}} if dynamic else {}
    torch.onnx.export(
        model,
        (torch.randn(*shape),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
        **kwargs,
    )
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return export(_tiny_cnn(), tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def dynamic_onnx(tmp_path_factory) -> Path:
    return export(_tiny_cnn(), tmp_path_factory.mktemp("dyn") / "dynamic.onnx", dynamic=True)


def write_samples(
    folder: Path, n: int, *, labels: bool = True, shape=(3, 16, 16), name: str = "x", seed: int = 0
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arrays = {name: rng.standard_normal(shape).astype(np.float32)}
        if labels:
            arrays["label"] = np.int64(i % 10)
        np.savez(folder / f"s{i:03d}.npz", **arrays)
    return folder


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    return write_samples(tmp_path_factory.mktemp("data") / "calib", 40)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The real ``sparsifyctl`` entry point in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.out, out.err
