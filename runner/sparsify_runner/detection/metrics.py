"""Detection quality: COCO-style mAP against ground truth, and box fidelity of one model's
detections to another's (for one-shot runs whose samples carry no labels).

``mean_average_precision`` uses ``torchmetrics`` (pycocotools backend), imported on call;
``box_fidelity`` is NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .postprocess import Detections, box_iou

FIDELITY_IOU = 0.5
FIDELITY_MIN_SCORE = 0.25


def _target_arrays(target: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(target, dict):
        boxes, labels = target["boxes"], target["labels"]
    else:
        boxes, labels = target
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64).reshape(-1),
    )


def _optional(value: Any) -> float | None:
    """A torchmetrics value as a float; its -1 ("no ground truth to score against") as None."""
    value = float(value)
    return None if value < 0 else value


def mean_average_precision(
    predictions: Sequence[Detections],
    targets: Sequence[Any],
    classes: Sequence[str],
) -> dict[str, Any]:
    """COCO mAP of per-image ``predictions`` against ``targets``.

    ``targets`` holds one ``(boxes (n, 4) xyxy pixels, labels (n,))`` pair (or a dict with
    those keys) per image, in the predictions' order and coordinates; ``classes`` names the
    label indices.

    Returns plain floats: ``map`` (mAP@0.5:0.95), ``map50``, ``map75``, and ``per_class``
    mapping every class name to its mAP@0.5:0.95, or to None when the class has no ground
    truth box in the set (COCO cannot score it; it does not count towards ``map``, and a
    model that detects it anyway is not penalized there). ``map*`` are None when there is
    no ground truth at all. ``images`` and ``targets`` count what was scored.
    """
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    if len(predictions) != len(targets):
        raise InputError(f"{len(predictions)} predictions for {len(targets)} target images; pass one each")
    preds, gts, num_targets = [], [], 0
    for det, target in zip(predictions, targets, strict=True):
        boxes, labels = _target_arrays(target)
        for what, lab in (("prediction", det.labels), ("target", labels)):
            bad = lab[(lab < 0) | (lab >= len(classes))]
            if bad.size:
                raise InputError(f"{what} label {int(bad[0])} is outside the {len(classes)} classes ")
        num_targets += len(labels)
        preds.append(
            {
                "boxes": torch.from_numpy(det.boxes),
                "scores": torch.from_numpy(det.scores),
                "labels": torch.from_numpy(det.labels),
            }
        )
        gts.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)})

    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools"
    )
    metric.update(preds, gts)
    result = metric.compute()
    per_class: dict[str, float | None] = dict.fromkeys(classes)
    seen = result["classes"].reshape(-1).tolist()
    values = result["map_per_class"].reshape(-1).tolist()
    if len(values) == len(seen):  # torchmetrics gives one -1 overall when no class was seen
        for index, value in zip(seen, values, strict=True):
            per_class[classes[int(index)]] = _optional(value)
    return {
        "map": _optional(result["map"]),
        "map50": _optional(result["map_50"]),
        "map75": _optional(result["map_75"]),
        "per_class": per_class,
        "images": len(predictions),
        "targets": num_targets,
    }


def _confident(det: Detections, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    keep = det.scores >= min_score
    return det.boxes[keep], det.labels[keep]


def _greedy_match(iou: np.ndarray, threshold: float) -> list[float]:
    """IoUs of the pairs matched greedily, highest IoU first, each row and column used once."""
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_rows, used_cols, matched = set(), set(), []
    for r, c in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            matched.append(float(iou[r, c]))
    return matched


def box_fidelity(
    reference: Sequence[Detections],
    candidate: Sequence[Detections],
    iou: float = FIDELITY_IOU,
    min_score: float = FIDELITY_MIN_SCORE,
) -> dict[str, Any]:
    """How closely ``candidate`` (e.g. a pruned or INT8 model) reproduces ``reference``'s
    detections (e.g. the original model) on the same images, without ground truth.

    Per image, detections scoring at least ``min_score`` are matched one-to-one, same class
    only, greedily by IoU (highest first) with IoU >= ``iou``. Returns ``recall`` (share of
    reference detections matched), ``precision`` (share of candidate detections matched),
    ``mean_iou`` of the matched pairs, and the counts ``reference``, ``candidate``,
    ``matched``, ``images``. A ratio with nothing to divide by is None (a reference without
    confident detections says nothing about recall), never a made-up 1.0.
    """
    if len(reference) != len(candidate):
        raise InputError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    n_ref = n_cand = 0
    ious: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        ref_boxes, ref_labels = _confident(ref, min_score)
        cand_boxes, cand_labels = _confident(cand, min_score)
        n_ref += len(ref_labels)
        n_cand += len(cand_labels)
        if len(ref_labels) and len(cand_labels):
            pair_iou = box_iou(ref_boxes, cand_boxes)
            pair_iou[ref_labels[:, None] != cand_labels[None, :]] = -1.0  # never matched
            ious.extend(_greedy_match(pair_iou, iou))
    matched = len(ious)
    return {
        "recall": matched / n_ref if n_ref else None,
        "precision": matched / n_cand if n_cand else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "reference": n_ref,
        "candidate": n_cand,
        "matched": matched,
        "images": len(reference),
    }
