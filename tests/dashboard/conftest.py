"""Fixtures for the dashboard tests: real runs made by ``sparsifyctl`` on a tiny ONNX model.

Two one-shot runs (INT8 only, and INT8 + pruning) and a two-point local sweep, made once
per session through the real CLI in-process, in a runs folder the dashboard discovers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from oneshot.conftest import FAST, _tiny_cnn, export, write_samples

ROOT = Path(__file__).resolve().parents[2]


def ctl(argv: list[str], capsys=None) -> tuple[int, str, str]:
    """``sparsifyctl ARGV`` in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = ("", "")
    if capsys is not None:
        captured = capsys.readouterr()
        out, err = captured.out, captured.err
    code = exc.value.code
    return (code if isinstance(code, int) else (0 if code is None else 1)), out, err


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("dash-inputs")
    return export(_tiny_cnn(), base / "tiny.onnx"), write_samples(base / "calib", 40)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory, tiny_model) -> Path:
    model, data = tiny_model
    root = tmp_path_factory.mktemp("dash-runs")
    common = [
        "--use-case",
        "my-sensor",
        "--model",
        str(model),
        "--data",
        str(data),
        "--recipe-args",
        FAST,
        "-q",
    ]
    for name, level in (("int8", "0.2"), ("pruned", "0.5")):
        code, _, _ = ctl(
            ["run", "one-shot", *common, "--optim-level", level, "--output", str(root / name), "--name", name]
        )
        assert code == 0, f"run {name} failed"
    code, _, _ = ctl(
        ["sweep", "one-shot", *common, "--optim-levels", "0.2,0.5", "--output", str(root / "sw")]
    )
    assert code == 0, "sweep failed"
    return root


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where screenshots go: $SPARSIFY_TEST_ARTIFACTS (kept) or pytest's tmp dir."""
    folder = Path(os.environ.get("SPARSIFY_TEST_ARTIFACTS") or tmp_path / "artifacts") / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots: {folder}")
    return folder
