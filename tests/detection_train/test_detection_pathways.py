"""Object detection end to end through ``sparsifyctl run``: training-aware (unstructured and
channels) and sparse-transfer on a YOLO-style detector, YOLO and COCO layouts, mAP in the
report, an ONNX model with dense boxes/scores, INT8 that keeps the decode in FP32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from det_helpers import IMAGE_SIZE, run_args

pytestmark = pytest.mark.slow


def _run(args: list[str], capsys) -> None:
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None), capsys.readouterr().err[-3000:]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _check_detector_onnx(path: Path, classes: int) -> None:
    """Dense pre-NMS outputs: boxes (B, N, 4) and scores (B, N, C) at the static input size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]
    boxes, scores = session.run(
        ["boxes", "scores"], {"images": np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)}
    )
    anchors = sum((IMAGE_SIZE // s) ** 2 for s in (8, 16, 32))
    assert boxes.shape == (2, anchors, 4) and scores.shape == (2, anchors, classes)
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_training_aware_unstructured_reports_map_and_keeps_detecting(
    det_data, yolo_checkpoint, tmp_path, capsys
):
    out = tmp_path / "ta"
    _run(
        run_args(
            "training-aware", yolo_checkpoint, det_data.root, out, "--optim-level", "0.5",
            "--train-kwargs", json.dumps({"epochs": 3, "batch_size": 16}),
        ),
        capsys,
    )  # fmt: skip
    report = _report(out)
    assert report["mode"] == "unstructured"
    base, opt = report["baseline"], report["optimized"]
    assert base["accuracy"] is None and opt["accuracy"] is None  # detection reports mAP, not accuracy
    for stats in (base, opt):
        assert 0.0 <= stats["map"] <= stats["map50"] <= 1.0
    assert base["map50"] > 0.05, "the fixture detector should detect the digits"
    assert opt["map50"] > 0.0, "the optimized detector must still detect something"
    assert set(opt["map_per_class"]) <= set(det_data.classes)
    assert opt["sparsity"] >= 0.3
    assert report["settings"]["layout"] == "yolo" and report["settings"]["image_size"] == IMAGE_SIZE
    history = report["training"]
    assert history and all(r["val_map"] is not None and r["val_accuracy"] is None for r in history)
    _check_detector_onnx(out / "model.onnx", len(det_data.classes))
    # model.pt loads without unpickling objects and is the arch + state dict of the result
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["arch_key"] == "yolov8-pico" and ckpt["classes"] == det_data.classes
    examples = sorted(p.name for p in (out / "examples").iterdir())
    assert examples and examples[0] == "val_00.png"  # baseline vs optimized boxes drawn
    summary = (out / "report.html").read_text()
    assert "mAP@0.5:0.95" in summary


def test_training_aware_channels_shrinks_the_detector(det_data, yolo_checkpoint, tmp_path, capsys):
    out = tmp_path / "ch"
    _run(
        run_args(
            "training-aware", yolo_checkpoint, det_data.root, out, "--optim-level", "0.5",
            "--structure", "channels", "--train-kwargs", json.dumps({"epochs": 2, "batch_size": 16}),
            recipe={"quantize": False},
        ),
        capsys,
    )  # fmt: skip
    report = _report(out)
    assert report["mode"] == "channels"
    assert report["optimized"]["flops"] < 0.85 * report["baseline"]["flops"]
    assert report["optimized"]["parameters"] < report["baseline"]["parameters"]
    assert report["optimized"]["map"] is not None
    _check_detector_onnx(out / "model.onnx", len(det_data.classes))
    # the pruned widths travel in model.pt, so it seeds a sparse-transfer run
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["shapes"]


def test_sparse_transfer_holds_the_mask_on_a_coco_layout(det_data, yolo_checkpoint, tmp_path, capsys):
    """A pre-sparsified detector (half of every conv's smallest weights zeroed) fine-tuned on
    the COCO-json copy of the data: the zeros stay zeros."""
    ckpt = torch.load(yolo_checkpoint, weights_only=True)
    state = ckpt["state_dict"]
    for key, value in state.items():
        if key.endswith(".weight") and value.dim() == 4 and value.numel() >= 256:
            threshold = value.abs().flatten().kthvalue(value.numel() // 2).values
            state[key] = torch.where(value.abs() <= threshold, torch.zeros_like(value), value)
    sparse = tmp_path / "sparse.pt"
    torch.save(ckpt, sparse)
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (coco / "annotations" / f"instances_{split}.json").write_text(
            (det_data.root / "annotations" / f"instances_{split}.json").read_text()
        )
        (coco / "images").mkdir(exist_ok=True)
        (coco / "images" / split).symlink_to(det_data.root / "images" / split)
    out = tmp_path / "st"
    _run(
        run_args(
            "sparse-transfer", sparse, coco, out, "--optim-level", "0.5",
            "--train-kwargs", json.dumps({"epochs": 1, "batch_size": 16}),
        ),
        capsys,
    )  # fmt: skip
    report = _report(out)
    settings = report["settings"]
    assert settings["layout"] == "coco"
    assert report["mode"] == "unstructured" and settings["base_sparsity"] > 0.3
    assert settings["mask_sparsity_after"] == pytest.approx(settings["base_sparsity"], abs=1e-6)
    assert report["optimized"]["map"] is not None and report["baseline"]["map"] is not None
