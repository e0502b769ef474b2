"""Bad detection data through ``sparsifyctl run``: one line naming the file (and line) and
the fix, exit code 2, nothing written, before any training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from det_helpers import IMAGE_SIZE, run_args


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    from sparsify_runner.models.detection import build_detector

    path = tmp_path_factory.mktemp("det_bad") / "yolo.pt"
    model = build_detector("yolov8-pico", 3, IMAGE_SIZE)
    torch.save({"state_dict": model.state_dict(), "arch_key": "yolov8-pico"}, path)
    return path


@pytest.fixture
def data_copy(det_data, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(det_data.root, root, ignore=shutil.ignore_patterns("annotations"))
    return root


def _first_label(root: Path, split: str = "train") -> Path:
    return next(p for p in sorted((root / "labels" / split).glob("*.txt")) if p.read_text().strip())


def _bad(args: list[str], out: Path, capsys, *expected: str) -> None:
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert exc.value.code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), "bad input must not write to the output"


def _break_label(root: Path, line: str) -> Path:
    label = _first_label(root)
    label.write_text(line + "\n" + label.read_text())
    return label


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1 0.5 0.5 0.2", "4 values"),
        ("7 0.5 0.5 0.2 0.2", "class id '7'"),
        ("0 0.95 0.5 0.2 0.2", "outside the image"),
    ],
)
def test_bad_label_line_names_file_and_line(
    untrained_checkpoint, data_copy, tmp_path, capsys, line, expected
):
    label = _break_label(data_copy, line)
    out = tmp_path / "out"
    args = run_args("training-aware", untrained_checkpoint, data_copy, out, "--optim-level", "0.5")
    _bad(args, out, capsys, label.name, "line 1", expected)


def test_image_that_does_not_decode(untrained_checkpoint, data_copy, tmp_path, capsys):
    image = next(iter(sorted((data_copy / "images" / "val").iterdir())))
    image.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    args = run_args("sparse-transfer", untrained_checkpoint, data_copy, out, "--optim-level", "0.5")
    _bad(args, out, capsys, image.name)


def test_no_val_split(untrained_checkpoint, data_copy, tmp_path, capsys):
    shutil.rmtree(data_copy / "images" / "val")
    shutil.rmtree(data_copy / "labels" / "val")
    out = tmp_path / "out"
    args = run_args("training-aware", untrained_checkpoint, data_copy, out, "--optim-level", "0.5")
    _bad(args, out, capsys, "val")


def test_classification_metric_for_detection(untrained_checkpoint, data_copy, tmp_path, capsys):
    out = tmp_path / "out"
    args = run_args(
        "training-aware", untrained_checkpoint, data_copy, out, "--optim-level", "0.5", "--eval-metric", "f1"
    )
    _bad(args, out, capsys, "eval metric 'f1' is for classification", "mAP")


def test_checkpoint_of_another_architecture(det_data, tmp_path, capsys):
    from sparsify_runner.models.detection import build_detector

    path = tmp_path / "small.pt"
    torch.save({"state_dict": build_detector("yolov8n", 3, IMAGE_SIZE).state_dict()}, path)
    out = tmp_path / "out"
    args = run_args(
        "training-aware", path, det_data.root, out, "--arch", "yolov8-pico", "--optim-level", "0.5"
    )
    _bad(args, out, capsys, "yolov8-pico", "check --arch")


def test_val_split_without_boxes(untrained_checkpoint, data_copy, tmp_path, capsys):
    for label in (data_copy / "labels" / "val").glob("*.txt"):
        label.write_text("")
    out = tmp_path / "out"
    args = run_args("training-aware", untrained_checkpoint, data_copy, out, "--optim-level", "0.5")
    _bad(args, out, capsys, "val split has no boxes", "mAP")
