"""How faithful one detector's outputs are to another's on the same images (no ground truth):
what the INT8 search ranks detection candidates by, and what one-shot reports for a detector
whose samples carry no boxes. NumPy only."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluate import cosine
from ..report import Fidelity
from .metrics import box_fidelity
from .postprocess import parse_outputs, postprocess


def detection_fidelity(reference: Any, candidate: Any) -> Fidelity:
    """``reference`` / ``candidate``: a detector's raw outputs over the same samples (output name
    -> array with one row per sample, as ``evaluate.run_onnx_outputs`` returns).

    ``box_agreement`` = confident detections matched one-to-one (same class, IoU >= 0.5) over
    the larger of the two detection counts, so missed and spurious boxes both count against
    it; ``cosine_similarity`` compares the dense class scores (box coordinates in pixels would
    make any cosine look perfect)."""
    ref_dets, cand_dets = postprocess(reference), postprocess(candidate)
    match = box_fidelity(ref_dets, cand_dets)
    larger = max(match["reference"], match["candidate"])
    ref_scores = [s for _, s in parse_outputs(reference)]
    cand_scores = [s for _, s in parse_outputs(candidate)]
    cos = float(np.mean([cosine(a, b) for a, b in zip(ref_scores, cand_scores, strict=True)]))
    return Fidelity(
        samples=len(ref_dets),
        cosine_similarity=round(cos, 6),
        box_agreement=round(match["matched"] / larger, 6) if larger else None,
        box_recall=None if match["recall"] is None else round(match["recall"], 6),
        box_mean_iou=None if match["mean_iou"] is None else round(match["mean_iou"], 6),
        box_count=larger,
    )
