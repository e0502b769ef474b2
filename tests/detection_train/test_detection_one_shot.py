"""One-shot on a detector's ONNX file through ``sparsifyctl run``: with ground-truth boxes in
the .npz samples the report gives mAP, without them box fidelity to the baseline; INT8
keeps the decode (everything after the last learned conv) in FP32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from det_helpers import FAST, IMAGE_SIZE


@pytest.fixture(scope="module")
def detector_onnx(yolo_checkpoint, tmp_path_factory) -> Path:
    """The fixture detector exported at a static 1x3x96x96 (one-shot takes static shapes)."""
    from sparsify_runner.models.detection import build_detector

    ckpt = torch.load(yolo_checkpoint, weights_only=True)
    model = build_detector(ckpt["arch_key"], len(ckpt["classes"]), IMAGE_SIZE).eval()
    model.load_state_dict(ckpt["state_dict"])
    path = tmp_path_factory.mktemp("det_onnx") / "detector.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
        str(path),
        input_names=["images"],
        output_names=["boxes", "scores"],
        opset_version=17,
        dynamo=False,
    )
    return path


def _samples(det_data, folder: Path, *, with_boxes: bool) -> Path:
    """Every image of the dataset as one .npz sample (``images`` 3x96x96 in [0, 1]), with its
    boxes in input pixels and class labels when ``with_boxes``."""
    from sparsify_runner.data.detection import inspect_detection, load_image

    folder.mkdir(parents=True)
    splits = inspect_detection(det_data.root)
    for i, sample in enumerate(splits.train + splits.val):
        array, boxes = load_image(sample, IMAGE_SIZE)
        extra = {"boxes": boxes, "labels": sample.labels} if with_boxes else {}
        np.savez(folder / f"s{i:03d}.npz", images=array, **extra)
    return folder


def _one_shot(model: Path, data: Path, out: Path, level: str, capsys, *extra: str) -> dict:
    from sparsifyctl.cli import main

    args = ["run", "one-shot", "--use-case", "detection", "--model", str(model), "--data", str(data)]
    args += ["--optim-level", level, "-o", str(out), "--quiet", *extra]
    args += ["--recipe-args", json.dumps(FAST)]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None), capsys.readouterr().err[-3000:]
    return json.loads((out / "report.json").read_text())


def test_decode_tail_is_the_prediction_convs_and_everything_after(detector_onnx):
    from sparsify_runner.modifiers.int8.prepare import decode_tail

    model = onnx.load(str(detector_onnx))
    tail = set(decode_tail(model))
    ops = {n.op_type for n in model.graph.node if n.name in tail}
    assert {"Sigmoid", "Softmax"} <= ops  # class probabilities and the DFL distribution
    convs = [n for n in model.graph.node if n.name in tail and n.op_type == "Conv"]
    assert len(convs) == 6  # the prediction convs: box and class at strides 8, 16, 32
    producers = {o: n for n in model.graph.node for o in n.output}
    for output in model.graph.output:  # both outputs are computed in the tail
        assert producers[output.name].name in tail


def test_one_shot_int8_reports_map_and_keeps_the_decode_fp32(det_data, detector_onnx, tmp_path, capsys):
    data = _samples(det_data, tmp_path / "samples", with_boxes=True)
    report = _one_shot(detector_onnx, data, tmp_path / "out", "0.2", capsys)
    base, opt = report["baseline"], report["optimized"]
    assert base["map50"] > 0.05 and opt["map"] is not None and opt["map50"] is not None
    fid = report["fidelity"]
    assert fid["top1_agreement"] is None and fid["box_count"] is not None
    int8 = [c for c in report["candidates"] if c["name"].startswith("int8")]
    assert int8, "the INT8 search measured candidates"
    assert any("the prediction convs and the decode" in n for n in report["notes"])
    if report["settings"].get("int8", {}).get("chosen", "fp32") != "fp32":
        from sparsify_runner.modifiers.int8.prepare import decode_tail

        tail = set(decode_tail(onnx.load(str(detector_onnx))))
        model = onnx.load(str(tmp_path / "out" / "model.onnx"))
        producers = {o: n for n in model.graph.node for o in n.output}
        decode = [n for n in model.graph.node if n.name in tail]
        assert {n.op_type for n in decode} >= {"Sigmoid", "Softmax"}  # still there, by name
        for node in decode:  # prediction convs and decode computed in float: no DQ feeds them
            if node.op_type == "Conv":
                continue  # its input comes from the quantized neck, dequantized; its output is float
            assert all(producers[i].op_type != "DequantizeLinear" for i in node.input if i in producers), node
        assert opt["map50"] > 0.5 * base["map50"], "INT8 must not make the detector blind"


def test_one_shot_without_boxes_reports_box_fidelity(det_data, detector_onnx, tmp_path, capsys):
    data = _samples(det_data, tmp_path / "samples", with_boxes=False)
    report = _one_shot(
        detector_onnx, data, tmp_path / "out", "0.5", capsys, "--quant-format", "qdq",
        "--objective", "size", "--max-accuracy-drop", "1",
    )  # fmt: skip
    assert report["policy"]["result"]["metric"] == "box agreement"
    assert report["mode"] == "unstructured"
    assert report["baseline"]["map"] is None and report["optimized"]["map"] is None
    fid = report["fidelity"]
    assert 0.0 <= fid["cosine_similarity"] <= 1.0
    if fid["box_count"]:
        assert 0.0 <= fid["box_agreement"] <= 1.0
