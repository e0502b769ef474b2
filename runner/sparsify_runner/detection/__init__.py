"""Object-detection post-processing and evaluation, shared by training, one-shot and predict.

* ``postprocess``: recognizes dense detector outputs and runs class-aware NMS (NumPy only).
* ``metrics``: COCO mAP via torchmetrics (torch imported on call) and box fidelity between
  two models' detections (NumPy only).

Importing this package does not import torch.
"""

from __future__ import annotations

from .metrics import box_fidelity, mean_average_precision
from .postprocess import (
    IOU_THRESHOLD,
    MAX_DETECTIONS,
    SCORE_THRESHOLD,
    Detections,
    nms_detections,
    parse_outputs,
    postprocess,
)

__all__ = [
    "IOU_THRESHOLD",
    "MAX_DETECTIONS",
    "SCORE_THRESHOLD",
    "Detections",
    "box_fidelity",
    "mean_average_precision",
    "nms_detections",
    "parse_outputs",
    "postprocess",
]
