"""Dense detector outputs -> per-image detections: format recognition and class-aware NMS.

NumPy only (no torch), so the ONNX one-shot path can use it without PyTorch installed.

Two dense formats are recognized (``parse_outputs``):

* two outputs, boxes ``(B, N, 4)`` x1, y1, x2, y2 and scores ``(B, N, C)`` in [0, 1]:
  the project's detectors (``models/detection/base.py``);
* one output ``(B, 4 + C, N)``: cx, cy, w, h then the class scores per anchor, the layout
  of a YOLOv8 ONNX export (``(1, 84, 8400)`` for COCO at 640).

Boxes are in input pixels in both. The defaults are the usual ones for mAP evaluation: keep
nearly everything (score >= 0.001, up to 100 detections per image) and let the AP curve rank them;
for showing detections to a person use a score threshold such as 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

SCORE_THRESHOLD = 0.001
"""Minimum class score for a candidate (mAP evaluation: low, so recall is not cut short)."""
IOU_THRESHOLD = 0.65
"""Boxes of one class overlapping a higher-scoring kept box by more than this are dropped."""
MAX_DETECTIONS = 100
"""Detections kept per image (COCO mAP counts at most 100)."""
MAX_CANDIDATES = 30_000
"""Candidates (box, class) pairs entering NMS per image, the highest-scoring ones."""

EXPECTED_FORMATS = (
    "expected boxes (B, N, 4) x1,y1,x2,y2 + scores (B, N, C), "
    "or one output (B, 4+C, N) of cx,cy,w,h + class scores (a YOLOv8 export)"
)


@dataclass
class Detections:
    """One image's detections, sorted by descending score."""

    boxes: np.ndarray
    """(k, 4) float32 x1, y1, x2, y2 in input pixels."""
    scores: np.ndarray
    """(k,) float32."""
    labels: np.ndarray
    """(k,) int64 class indices."""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(
                f"detections need as many boxes ({len(self.boxes)}), scores ({len(self.scores)}) "
                f"and labels ({len(self.labels)})"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) of xyxy boxes; degenerate boxes have IoU 0 with everything."""
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(1, -1, 4)
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy_nms(boxes: np.ndarray, labels: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Indices kept by greedy NMS over score-sorted ``boxes``, one class at a time (a box only
    suppresses boxes of its own label), stopping after ``limit`` kept boxes."""
    keep: list[int] = []
    remaining = np.arange(len(boxes))
    while remaining.size and len(keep) < limit:
        i, rest = remaining[0], remaining[1:]
        keep.append(int(i))
        iou = box_iou(boxes[i], boxes[rest])[0]
        suppressed = (iou > iou_threshold) & (labels[rest] == labels[i])
        remaining = rest[~suppressed]
    return np.asarray(keep, dtype=np.int64)


def nms_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    multi_label: bool = True,
    max_candidates: int = MAX_CANDIDATES,
) -> Detections:
    """Class-aware greedy NMS on one image's dense predictions.

    ``boxes`` (N, 4) xyxy, ``scores`` (N, C). With ``multi_label`` (the mAP-evaluation
    convention) every (anchor, class) pair scoring at least ``score_threshold`` is a
    candidate, so one box may be reported for two classes; otherwise only each anchor's best
    class is. Returns at most ``max_detections`` detections sorted by descending score.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim == 1:
        scores = scores[:, None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.ndim != 2 or len(scores) != len(boxes):
        raise InputError(
            f"NMS needs boxes (N, 4) and scores (N, C) for the same N, got {boxes.shape} and {scores.shape}"
        )
    if scores.shape[1] == 0 or len(scores) == 0 or max_detections <= 0:
        return Detections.empty()
    if multi_label:
        anchor, label = np.nonzero(scores >= score_threshold)
        conf = scores[anchor, label]
    else:
        label = scores.argmax(1)
        conf = scores[np.arange(len(scores)), label]
        anchor = np.nonzero(conf >= score_threshold)[0]
        label, conf = label[anchor], conf[anchor]
    if anchor.size == 0:
        return Detections.empty()
    order = np.argsort(-conf, kind="stable")[:max_candidates]
    anchor, label, conf = anchor[order], label[order], conf[order]
    keep = _greedy_nms(boxes[anchor], label, iou_threshold, max_detections)
    return Detections(boxes[anchor[keep]], conf[keep], label[keep])


def _shape_list(arrays: list[tuple[str, np.ndarray]]) -> str:
    return ", ".join(f"{name} {tuple(a.shape)}" for name, a in arrays) or "none"


def parse_outputs(outputs: Any, num_classes: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch image, ``(boxes (N, 4) xyxy pixels, scores (N, C))`` from a detector's raw
    outputs: a list/tuple of arrays (in output order), a dict name -> array (``boxes`` and
    ``scores`` are looked up by name when present), or a single array. ``num_classes``, when
    known, is checked against C (and settles the one-output layout). Any other format
    raises InputError naming the output shapes."""
    if isinstance(outputs, dict):
        if "boxes" in outputs and "scores" in outputs:
            named = [("boxes", outputs["boxes"]), ("scores", outputs["scores"])]
        else:
            named = list(outputs.items())
    elif isinstance(outputs, list | tuple):
        named = [(f"output{i}", a) for i, a in enumerate(outputs)]
    else:
        named = [("output0", outputs)]
    named = [(str(n), np.asarray(a)) for n, a in named]

    def fail(why: str) -> InputError:
        return InputError(
            f"detector outputs [{_shape_list(named)}] are not a detection format this runner reads "
            f"({why}); {EXPECTED_FORMATS}"
        )

    arrays = [a for _, a in named]
    if len(arrays) == 2:
        boxes, scores = arrays
        if boxes.ndim == 3 and boxes.shape[-1] != 4 and scores.ndim == 3 and scores.shape[-1] == 4:
            boxes, scores = scores, boxes  # listed scores-first
        if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[-1] != 4:
            raise fail("two outputs, but not (B, N, 4) boxes and (B, N, C) scores")
        if boxes.shape[:2] != scores.shape[:2]:
            raise fail("boxes and scores disagree on batch size or box count")
        if num_classes is not None and scores.shape[-1] != num_classes:
            raise fail(f"scores have {scores.shape[-1]} classes, the data has {num_classes}")
        return [
            (b.astype(np.float32, copy=False), s.astype(np.float32, copy=False))
            for b, s in zip(boxes, scores, strict=True)
        ]
    if len(arrays) == 1:
        (dense,) = arrays
        if dense.ndim != 3 or dense.shape[1] < 5:
            raise fail("one output, but not (B, 4+C, N)")
        if num_classes is not None and dense.shape[1] != 4 + num_classes:
            raise fail(f"dimension 1 is {dense.shape[1]}, not 4 + {num_classes} classes")
        if num_classes is None and dense.shape[1] >= dense.shape[2]:
            raise fail(
                "dimension 1 is not smaller than dimension 2, so it does not look like 4+C; pass num_classes"
            )
        parsed = []
        for image in dense.astype(np.float32, copy=False):
            cx, cy, w, h = image[:4]
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
            parsed.append((boxes, np.ascontiguousarray(image[4:].T)))
        return parsed
    raise fail(f"{len(arrays)} outputs")


def postprocess(
    outputs: Any,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    num_classes: int | None = None,
    multi_label: bool = True,
) -> list[Detections]:
    """``parse_outputs`` then ``nms_detections`` for each batch image."""
    return [
        nms_detections(boxes, scores, score_threshold, iou_threshold, max_detections, multi_label)
        for boxes, scores in parse_outputs(outputs, num_classes)
    ]
