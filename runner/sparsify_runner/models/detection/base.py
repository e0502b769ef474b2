"""The contract every detector in the project follows, so one training loop, one exporter,
one INT8 search and one mAP evaluation serve all of them.

* ``model(images)`` -> ``(boxes, scores)``: dense, pre-NMS predictions, what the ONNX file
  outputs. ``images`` is ``(B, 3, S, S)`` float in [0, 1] (the detector normalizes inside);
  ``boxes`` is ``(B, N, 4)`` x1, y1, x2, y2 in input pixels; ``scores`` is ``(B, N, C)``
  per-class probabilities in [0, 1] (C = the dataset's classes, no background column).
  N is fixed by the architecture and the input size, so exported shapes are static. NMS
  is not part of the graph: ``detection.postprocess`` runs it on these outputs.
* ``model.train_outputs(images)`` -> a dict holding at least ``boxes`` and ``scores`` as
  above (differentiable, computed in training mode) plus whatever the loss needs.
* ``model.loss(outputs, targets)`` -> scalar loss; ``targets`` is one dict per image with
  ``boxes`` ``(n, 4)`` float32 x1, y1, x2, y2 in input pixels and ``labels`` ``(n,)`` int64
  class indices (n may be 0: a background image).
* ``model.prediction_layers()`` -> module names of the final prediction convs (class, box,
  any fixed decode layer): pruning never touches them.
* ``model.class_head_keys()`` -> the state-dict keys whose shapes depend on the class count:
  a checkpoint trained on other classes loads everything else and these start fresh.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Detector(Protocol):
    arch: str
    num_classes: int
    image_size: int

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def train_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def loss(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor: ...

    def prediction_layers(self) -> list[str]: ...

    def class_head_keys(self) -> list[str]: ...
