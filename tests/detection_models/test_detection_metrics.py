"""Detection post-processing (output formats, class-aware NMS) and metrics (COCO mAP through
torchmetrics, box fidelity between two models' detections)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sparsify_runner.detection import (
    Detections,
    box_fidelity,
    mean_average_precision,
    nms_detections,
    parse_outputs,
    postprocess,
)
from sparsify_runner.errors import InputError

# ------------------------------------------------------------------------------ NMS


def _nms_case() -> tuple[np.ndarray, np.ndarray]:
    """Six boxes, two classes. By hand (IoU threshold 0.65):
    a (0.9, class 0) kept; b overlaps a by 81/119 = 0.68 -> suppressed; c = a's box but class 1
    -> kept; d far away -> kept; e overlaps a by 100/120 = 0.83 -> suppressed; f overlaps a by
    50/150 = 0.33 -> kept."""
    boxes = np.array(
        [
            [0, 0, 10, 10],  # a
            [1, 1, 11, 11],  # b
            [0, 0, 10, 10],  # c
            [50, 50, 60, 60],  # d
            [0, 0, 10, 12],  # e
            [5, 0, 15, 10],  # f
        ],
        dtype=np.float32,
    )
    scores = np.zeros((6, 2), dtype=np.float32)
    for i, (cls, s) in enumerate([(0, 0.9), (0, 0.8), (1, 0.6), (0, 0.7), (0, 0.5), (0, 0.4)]):
        scores[i, cls] = s
    return boxes, scores


def test_nms_hand_computed_case():
    boxes, scores = _nms_case()
    det = nms_detections(boxes, scores)
    np.testing.assert_allclose(det.scores, [0.9, 0.7, 0.6, 0.4])
    assert det.labels.tolist() == [0, 0, 1, 0]
    np.testing.assert_array_equal(det.boxes, boxes[[0, 3, 2, 5]])
    assert det.boxes.dtype == np.float32 and det.labels.dtype == np.int64


def test_nms_thresholds_and_limits():
    boxes, scores = _nms_case()
    assert nms_detections(boxes, scores, score_threshold=0.65).scores.tolist() == pytest.approx([0.9, 0.7])
    assert len(nms_detections(boxes, scores, max_detections=2)) == 2
    # A looser IoU threshold keeps b (0.68 overlap) and e is still suppressed (0.83).
    assert len(nms_detections(boxes, scores, iou_threshold=0.7)) == 5
    assert len(nms_detections(np.zeros((0, 4)), np.zeros((0, 2)))) == 0
    assert len(nms_detections(boxes, np.zeros_like(scores))) == 0


def test_nms_multi_label():
    boxes = np.array([[0, 0, 10, 10]], dtype=np.float32)
    scores = np.array([[0.9, 0.5]], dtype=np.float32)
    assert nms_detections(boxes, scores).labels.tolist() == [0, 1]
    assert nms_detections(boxes, scores, multi_label=False).labels.tolist() == [0]


# ------------------------------------------------------------------------------ formats


def test_two_output_format_list_dict_and_order():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], dtype=np.float32).repeat(2, 0)
    scores = np.array([[[0.9, 0.0, 0.0], [0.0, 0.0, 0.8]]], dtype=np.float32).repeat(2, 0)
    for outputs in ([boxes, scores], (scores, boxes), {"scores": scores, "boxes": boxes}):
        parsed = parse_outputs(outputs, num_classes=3)
        assert len(parsed) == 2
        np.testing.assert_array_equal(parsed[1][0], boxes[1])
        np.testing.assert_array_equal(parsed[1][1], scores[1])
    dets = postprocess([boxes, scores])
    assert [d.labels.tolist() for d in dets] == [[0, 2], [0, 2]]


def test_yolov8_export_format():
    """One (B, 4+C, N) output of cx, cy, w, h and class scores, as a YOLOv8 ONNX export gives."""
    dense = np.zeros((1, 4 + 2, 8), dtype=np.float32)
    dense[0, :4, 0] = [10, 20, 4, 8]  # cx cy w h -> 8 16 12 24
    dense[0, 5, 0] = 0.7
    dense[0, :4, 1:] = [[40], [40], [10], [10]]
    parsed = parse_outputs([dense])
    assert parsed[0][0].shape == (8, 4) and parsed[0][1].shape == (8, 2)
    np.testing.assert_allclose(parsed[0][0][0], [8, 16, 12, 24])
    (det,) = postprocess(dense, num_classes=2)
    assert det.labels.tolist() == [1] and det.scores.tolist() == pytest.approx([0.7])
    np.testing.assert_allclose(det.boxes[0], [8, 16, 12, 24])


@pytest.mark.parametrize(
    ("outputs", "num_classes", "fragment"),
    [
        ([np.zeros((1, 10, 4)), np.zeros((1, 10, 3)), np.zeros((1, 10))], None, "3 outputs"),
        ([np.zeros((1, 10, 5)), np.zeros((1, 10, 3))], None, "not (B, N, 4) boxes"),
        ([np.zeros((1, 10, 4)), np.zeros((1, 9, 3))], None, "disagree"),
        ([np.zeros((1, 10, 4)), np.zeros((1, 10, 3))], 80, "3 classes, the data has 80"),
        ([np.zeros((1, 8400, 85))], 80, "not 4 + 80"),  # a (B, N, 5+C) YOLOv5-style output
        ([np.zeros((1, 84, 20))], None, "pass num_classes"),
        ([np.zeros((84, 8400))], None, "not (B, 4+C, N)"),
    ],
)
def test_unrecognized_formats_fail_with_one_line(outputs, num_classes, fragment):
    with pytest.raises(InputError) as err:
        parse_outputs(outputs, num_classes=num_classes)
    message = str(err.value)
    assert "\n" not in message and fragment in message
    assert "(B, 4+C, N)" in message and str(tuple(outputs[0].shape)) in message


def test_postprocess_does_not_import_torch():
    code = (
        "import sys, numpy as np; from sparsify_runner.detection import postprocess, box_fidelity;"
        "d = postprocess([np.zeros((1, 3, 4), np.float32), np.full((1, 3, 2), 0.5, np.float32)]);"
        "box_fidelity(d, d); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ mAP

CLASSES = ["cat", "dog", "bird"]
TRUTH = [
    (np.array([[10, 10, 50, 50], [60, 60, 100, 90]], dtype=np.float32), np.array([0, 1])),
    (np.array([[20, 30, 70, 80]], dtype=np.float32), np.array([0])),
    (np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)),  # background image
]


def _predict(shift: float = 0.0) -> list[Detections]:
    return [Detections(b + shift, np.linspace(0.9, 0.8, len(lab)), lab) for b, lab in TRUTH]


def test_map_perfect_shifted_and_missing_class():
    perfect = mean_average_precision(_predict(), TRUTH, CLASSES)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    assert perfect["map75"] == pytest.approx(1.0)
    # "bird" has no ground truth: COCO cannot score it, so it is None, not -1 or 0.
    assert perfect["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "bird": None}
    assert (perfect["images"], perfect["targets"]) == (3, 3)
    assert all(type(perfect[k]) is float for k in ("map", "map50", "map75"))

    # Shifting by 6 px keeps IoU >= 0.5 (>= 0.51 here) but not >= 0.95: map50 stays, map drops.
    shifted = mean_average_precision(_predict(6.0), TRUTH, CLASSES)
    assert shifted["map50"] == pytest.approx(1.0)
    assert shifted["map"] < 0.8 * perfect["map"]

    # A confident false "bird" in the background image: bird stays unscored, cat/dog unharmed.
    with_bird = _predict()
    with_bird[2] = Detections(np.array([[0, 0, 30, 30]]), [0.95], [2])
    result = mean_average_precision(with_bird, TRUTH, CLASSES)
    assert result["per_class"]["bird"] is None and result["map"] == pytest.approx(1.0)

    nothing = mean_average_precision([Detections.empty()] * 3, TRUTH, CLASSES)
    assert nothing["map"] == 0.0 and nothing["per_class"]["cat"] == 0.0


def test_map_bad_input():
    with pytest.raises(InputError, match="2 predictions for 3 target images"):
        mean_average_precision(_predict()[:2], TRUTH, CLASSES)
    with pytest.raises(InputError, match="label 3 is outside the 3 classes"):
        bad = _predict()
        bad[0] = Detections(np.array([[0, 0, 5, 5]]), [0.5], [3])
        mean_average_precision(bad, TRUTH, CLASSES)


# ------------------------------------------------------------------------------ box fidelity


def _dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, dtype=np.float32), scores, labels)


def test_box_fidelity_identical_and_shifted():
    ref = [_dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [0, 1]), _dets([[5, 5, 15, 15]], [0.7], [0])]
    same = box_fidelity(ref, ref)
    assert same == {
        "recall": 1.0,
        "precision": 1.0,
        "mean_iou": 1.0,
        "reference": 3,
        "candidate": 3,
        "matched": 3,
        "images": 2,
    }
    # Shift every box right by 2: IoU 80/120 for the 10 px boxes, 360/440 for the 20 px one.
    shifted = [_dets(d.boxes + np.array([2, 0, 2, 0]), d.scores, d.labels) for d in ref]
    result = box_fidelity(ref, shifted)
    assert result["recall"] == 1.0 and result["precision"] == 1.0
    assert result["mean_iou"] == pytest.approx((80 / 120 * 2 + 360 / 440) / 3)
    # Shift by 5: the 10 px boxes drop to IoU 1/3 (< 0.5) and are unmatched.
    far = [_dets(d.boxes + np.array([5, 0, 5, 0]), d.scores, d.labels) for d in ref]
    result = box_fidelity(ref, far)
    assert result["matched"] == 1 and result["recall"] == pytest.approx(1 / 3)
    # Same place, other class: never a match.
    relabelled = [_dets(d.boxes, d.scores, 2 - d.labels) for d in ref]
    assert box_fidelity(ref, relabelled)["matched"] == 1  # only dog (1 -> 1) keeps its class


def test_box_fidelity_empty_and_low_scores():
    ref = [_dets([[0, 0, 10, 10]], [0.9], [0])]
    faint = [_dets([[0, 0, 10, 10]], [0.1], [0])]  # below min_score: ignored
    result = box_fidelity(ref, faint)
    assert result["recall"] == 0.0 and result["precision"] is None and result["mean_iou"] is None
    result = box_fidelity(faint, ref)
    assert result["recall"] is None and result["precision"] == 0.0  # nothing confident to recall
    result = box_fidelity([Detections.empty()], [Detections.empty()])
    assert result["recall"] is None and result["precision"] is None and result["matched"] == 0
    assert box_fidelity(faint, faint, min_score=0.05)["recall"] == 1.0
    with pytest.raises(InputError, match="1 reference images but 2 candidate"):
        box_fidelity(ref, ref * 2)


def test_greedy_matching_prefers_highest_iou():
    """Two candidates overlap one reference box; the better-overlapping one is matched and
    the other, left over, lowers precision."""
    ref = [_dets([[0, 0, 10, 10]], [0.9], [0])]
    cand = [_dets([[1, 0, 11, 10], [0, 0, 10, 11]], [0.95, 0.6], [0, 0])]
    result = box_fidelity(ref, cand)
    assert result["matched"] == 1 and result["precision"] == 0.5
    assert result["mean_iou"] == pytest.approx(100 / 110)
