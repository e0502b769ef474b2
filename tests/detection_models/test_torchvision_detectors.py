"""torchvision detectors behind the detector contract: shapes, loss, a training step, ONNX parity,
class-head re-sizing when loading checkpoints, and input errors. Random weights only (no downloads)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sparsify_runner.errors import InputError
from sparsify_runner.models.detection.base import Detector
from sparsify_runner.models.detection.torchvision_detectors import (
    TORCHVISION_DETECTORS,
    build_torchvision_detector,
    load_detector_weights,
    resize_head,
)

# ssdlite / Faster R-CNN at their native 320; the ResNet-50 models small (still 10-20 s each: slow)
SIZES = {
    "ssdlite320_mobilenet_v3_large": 320,
    "retinanet_resnet50_fpn_v2": 96,
    "fcos_resnet50_fpn": 96,
    "fasterrcnn_mobilenet_v3_large_320_fpn": 320,
}
HEAVY = {"retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"}


def _archs() -> list:
    return [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in TORCHVISION_DETECTORS]


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _onnx_outputs(model: torch.nn.Module, images: torch.Tensor) -> tuple[list, np.ndarray, np.ndarray]:
    """Export as training/export.py does (batch-1 example, dynamic batch axis), run on ``images``."""
    import onnxruntime as ort

    buf = io.BytesIO()
    names = ["images", "boxes", "scores"]
    with torch.no_grad():
        torch.onnx.export(
            model,
            (images[:1],),
            buf,
            input_names=names[:1],
            output_names=names[1:],
            dynamic_axes={n: {0: "batch"} for n in names},
            opset_version=17,
            dynamo=False,
        )
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"images": images.numpy()})
    return [o.shape for o in sess.get_outputs()], boxes, scores


def _spread_objectness(model, images: torch.Tensor) -> None:
    """Untrained, every RPN objectness is ~0.5 and the top-n / NMS picks among near-ties that
    torch and onnxruntime may break differently; scale the logits to std ~3, like a trained RPN."""
    rpn = model.model.rpn
    with torch.no_grad():
        feats = list(model._feature_dict(images).values())
        logits = torch.cat([o.flatten() for o in rpn.head(feats)[0]])
        rpn.head.cls_logits.weight.mul_(3.0 / float(logits.std()))


@pytest.mark.parametrize("arch", _archs())
def test_contract_training_step_and_onnx_parity(arch):
    torch.manual_seed(0)
    size, classes = SIZES[arch], 3
    model = build_torchvision_detector(arch, classes, size)
    assert isinstance(model, Detector)
    assert (model.arch, model.num_classes, model.image_size) == (arch, classes, size)
    images = torch.rand(2, 3, size, size)
    if arch.startswith("fasterrcnn"):
        _spread_objectness(model, images)
        model.model.roi_heads.fg_bg_sampler.batch_size_per_image = 128  # box-head loss on fewer RoIs: speed

    model.eval()
    with torch.no_grad():
        boxes, scores = model(images)
    n = boxes.shape[1]
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, classes)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1
    assert float(boxes.min()) >= 0 and float(boxes.max()) <= size

    shapes, onnx_boxes, onnx_scores = _onnx_outputs(model, images)
    assert shapes == [["batch", n, 4], ["batch", n, classes]]  # N static, batch dynamic
    np.testing.assert_allclose(onnx_scores, scores.numpy(), atol=1e-3)
    if arch.startswith("fasterrcnn"):
        # NMS inside the graph: where two overlapping proposals' objectness ties in float32,
        # onnxruntime may keep the other one; allow a few such rows
        same = np.isclose(onnx_boxes, boxes.numpy(), atol=1e-3, rtol=1e-4).all(-1)
        assert same.mean() > 0.95, f"{(~same).sum()} of {same.size} rows differ"
    else:
        np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-3, rtol=1e-4)

    model.train()
    targets = [_target([[10, 20, 60, 90], [30, 5, 70, 40]], [0, 2]), _target([], [])]
    torch.manual_seed(1)  # Faster R-CNN samples proposals at random
    out = model.train_outputs(images)
    assert out["boxes"].shape == (2, n, 4) and out["scores"].shape == (2, n, classes)
    assert out["scores"].requires_grad
    loss = model.loss(out, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(model.loss(out, [_target([], []), _target([], [])]))  # background only
    with pytest.raises(InputError, match="target label 3 is outside 0..2"):
        model.loss(out, [_target([[1, 1, 9, 9]], [3]), _target([], [])])

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    torch.manual_seed(1)
    with torch.no_grad():
        after = model.loss(model.train_outputs(images), targets)
    assert torch.isfinite(after) and float(after) != float(loss)


@pytest.mark.parametrize("arch", _archs())
def test_head_resized_when_checkpoint_has_other_classes(arch, tmp_path):
    torch.manual_seed(0)
    coco = build_torchvision_detector(arch, 91, 64)
    path = tmp_path / "detector.pt"
    torch.save({"arch_key": arch, "state_dict": coco.state_dict()}, path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["arch_key"] == arch

    class_keys = set(coco.class_head_keys())
    assert class_keys <= set(coco.state_dict())
    for name in coco.prediction_layers():  # protected from pruning; every class layer among them
        coco.get_submodule(name)
    assert {k.rsplit(".", 1)[0] for k in class_keys} <= set(coco.prediction_layers())
    coco_state = coco.state_dict()
    small = build_torchvision_detector(arch, 5, 64)
    for state in (ckpt["state_dict"], coco.model.state_dict()):  # wrapper keys, raw torchvision keys
        note = load_detector_weights(small, state)
        assert note.startswith("classification head re-sized 91 -> 5 classes;") and "backbone" in note
        loaded = small.state_dict()
        assert set(loaded) == set(coco_state)
        for key, value in coco_state.items():
            if key in class_keys:  # fresh, sized for 5 classes
                per_class = value.shape[0] // (91 + small.background_offset)  # anchors (x4 for boxes)
                assert loaded[key].shape[0] == per_class * (5 + small.background_offset), key
            else:
                assert torch.equal(loaded[key], value), key
        small.eval()
        with torch.no_grad():
            _, scores = small(torch.rand(1, 3, 64, 64))
        assert scores.shape[-1] == 5

    resize_head(small, 91)  # same class count as the checkpoint: everything loads, no note
    assert load_detector_weights(small, ckpt["state_dict"]) == ""
    assert all(torch.equal(v, coco_state[k]) for k, v in small.state_dict().items())

    resize_head(small, 7)
    assert small.num_classes == 7
    assert all(torch.equal(v, coco_state[k]) for k, v in small.state_dict().items() if k not in class_keys)
    with torch.no_grad():
        _, scores = small(torch.rand(1, 3, 64, 64))
    assert scores.shape[-1] == 7


def test_project_loader_resizes_class_head(tmp_path):
    from sparsify_runner.models.detection import native_size
    from sparsify_runner.models.detection.load import load_detection_model

    arch = "ssdlite320_mobilenet_v3_large"
    assert native_size(arch) == 320 and native_size("fcos_resnet50_fpn") is None
    torch.save(
        {"arch_key": arch, "state_dict": build_torchvision_detector(arch, 91, 320).state_dict()},
        tmp_path / "m.pt",
    )
    loaded = load_detection_model(tmp_path / "m.pt", None, ["a", "b"], image_size=None, default_size=640)
    assert loaded.module.image_size == 320 and loaded.module.num_classes == 2 and loaded.head_replaced
    assert loaded.notes == ["classification head re-sized 91 -> 2 classes; backbone and box head loaded"]
    with pytest.raises(InputError, match="was built for 320x320 images, got"):
        loaded.module(torch.rand(1, 3, 256, 256))


def test_wrong_checkpoint_is_one_line_input_error():
    ssd = build_torchvision_detector("ssdlite320_mobilenet_v3_large", 5, 64)
    frcnn = build_torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 5, 64)
    with pytest.raises(InputError) as err:
        load_detector_weights(frcnn, ssd.state_dict())
    assert "\n" not in str(err.value) and "check the architecture" in str(err.value)


def test_unknown_arch_and_bad_sizes():
    with pytest.raises(InputError, match="did you mean ssdlite320_mobilenet_v3_large"):
        build_torchvision_detector("ssdlite_mobilenet_v3", 3, 320)
    with pytest.raises(InputError, match="unknown detection architecture 'resnet18'"):
        build_torchvision_detector("resnet18", 3, 320)
    with pytest.raises(InputError, match="multiple of 32"):
        build_torchvision_detector("ssdlite320_mobilenet_v3_large", 3, 300)
    with pytest.raises(InputError, match="at least 1 class"):
        build_torchvision_detector("ssdlite320_mobilenet_v3_large", 0, 320)
