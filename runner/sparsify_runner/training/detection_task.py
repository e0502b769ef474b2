"""Object detection as a training task: images + boxes in, the detector's own loss, mAP out.

The detector follows ``models.detection.base``: ``model(images)`` gives dense pre-NMS
``(boxes, scores)``, ``train_outputs`` / ``loss`` train it. Evaluation runs NMS
(``detection.postprocess``) and COCO mAP (``detection.metrics``, torchmetrics) on the
validation split, in PyTorch during training and on onnxruntime for the exported models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .task import Task, _subset

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")
# Decoded images are kept in memory when the whole split fits in this many bytes.
CACHE_BYTES = 1 << 30


class DetectionDataset(Dataset):
    """``({"images": (3, S, S) float in [0, 1]}, {"boxes": (n, 4) pixels xyxy, "labels": (n,)})``;
    training images are flipped left-right at random (boxes follow)."""

    def __init__(self, samples: list, size: int, *, flip: bool = False) -> None:
        self.samples, self.size, self.flip = samples, size, flip
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = (
            {} if len(samples) * 3 * size * size * 4 <= CACHE_BYTES else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from ..data.detection import load_image

        if self._cache is not None and i in self._cache:
            return self._cache[i]
        loaded = load_image(self.samples[i], self.size)
        if self._cache is not None:
            self._cache[i] = loaded
        return loaded

    def __getitem__(self, i: int):
        array, boxes = self._load(i)
        image, boxes = torch.from_numpy(array), torch.from_numpy(boxes)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.stack(
                [self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], 1
            )
        labels = torch.from_numpy(self.samples[i].labels)
        return {INPUT_NAME: image}, {"boxes": boxes.reshape(-1, 4), "labels": labels}


def _targets_numpy(target: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return target["boxes"].numpy(), target["labels"].numpy()


@dataclass
class DetectionTask(Task):
    def collate(self, batch: list) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        return {INPUT_NAME: torch.stack([b[0][INPUT_NAME] for b in batch])}, [b[1] for b in batch]

    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        return model(inputs[INPUT_NAME])

    def targets_to(self, targets: list[dict[str, torch.Tensor]], device: torch.device) -> list:
        return [{k: v.to(device) for k, v in t.items()} for t in targets]

    def training_loss(self, model, inputs, targets):
        bare = model.module if hasattr(model, "module") else model  # DDP wraps the detector
        outputs = bare.train_outputs(inputs[INPUT_NAME])
        return bare.loss(outputs, targets), outputs

    def distillation_loss(self, outputs, teacher, inputs, temperature: float) -> torch.Tensor:
        """Dense output distillation: the student's class scores match the teacher's (BCE
        against the teacher's probabilities) and its boxes match the teacher's where the
        teacher is confident (L1 in image units, weighted by the teacher's top score).
        Every anchor counts, so the student also learns where the teacher sees nothing;
        ``temperature`` does not apply to per-class sigmoid scores."""
        with torch.no_grad():
            teacher_boxes, teacher_scores = teacher(inputs[INPUT_NAME])
        with torch.autocast(teacher_scores.device.type, enabled=False):
            scores = outputs["scores"].float().clamp(1e-6, 1 - 1e-6)
            cls = F.binary_cross_entropy(scores, teacher_scores.float(), reduction="sum")
            weight = teacher_scores.float().amax(-1)
            box = (outputs["boxes"].float() - teacher_boxes.float()).abs().sum(-1) / self.settings[
                "image_size"
            ]
            norm = weight.sum().clamp_min(1.0)
            return (cls + 5.0 * (weight * box).sum()) / norm

    # ---- evaluation ----------------------------------------------------------------------
    def predictions(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> list:
        """Post-NMS detections of ``model`` on the validation split (PyTorch)."""
        from ..detection.postprocess import nms_detections
        from .loop import make_loader

        was_training = model.training
        model.eval()
        detections = []
        with torch.no_grad():
            for inputs, _ in make_loader(self.val, batch_size, collate=self.collate):
                boxes, scores = self.forward(model, {k: v.to(device) for k, v in inputs.items()})
                for b, s in zip(boxes.float().cpu().numpy(), scores.float().cpu().numpy(), strict=True):
                    detections.append(nms_detections(b, s))
        model.train(was_training)
        return detections

    def val_targets(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [_targets_numpy(self.val[i][1]) for i in range(len(self.val))]

    def evaluate(self, model, device, batch_size: int = 64) -> dict[str, float]:
        from ..detection.metrics import mean_average_precision

        result = mean_average_precision(
            self.predictions(model, device, batch_size), self.val_targets(), self.classes
        )
        return {"map": result["map"], "map50": result["map50"]}

    def onnx_metrics(self, path, samples: list, targets: list, batch_size: int = 64) -> dict[str, Any]:
        """mAP of an exported detector on onnxruntime (NMS in numpy, as served)."""
        from ..detection.metrics import mean_average_precision
        from ..detection.postprocess import postprocess
        from ..evaluate import run_onnx_outputs

        detections = postprocess(run_onnx_outputs(path, samples, batch_size=batch_size))
        return mean_average_precision(detections, targets, self.classes)

    def write_examples(self, baseline, optimized, samples: list, targets: list, out_dir, count: int = 4):
        """``val_NN.png``: baseline vs optimized detections on the first ``count`` val images."""
        from ..detection.draw import draw_examples
        from ..detection.postprocess import postprocess
        from ..evaluate import run_onnx_outputs

        shown = samples[:count]
        dets = [postprocess(run_onnx_outputs(path, shown)) for path in (baseline, optimized)]
        images = [s[INPUT_NAME] for s in shown]
        return draw_examples(images, dets[0], dets[1], targets[:count], self.classes, out_dir)

    def numpy_samples(self, dataset: Dataset, limit: int | None = None):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        samples, targets = [], []
        for i in range(n):
            inputs, target = dataset[i]
            samples.append({k: v.numpy() for k, v in inputs.items()})
            targets.append(_targets_numpy(target))
        return samples, targets


def detection_task(
    splits, image_size: int, *, metric: str = "map", max_train: int = 0, max_val: int = 0, seed: int = 0
) -> DetectionTask:
    """Training (flipped at random) and validation datasets of a ``DetectionSplits``."""
    return DetectionTask(
        "detection",
        list(splits.classes),
        _subset(DetectionDataset(splits.train, image_size, flip=True), max_train, seed),
        _subset(DetectionDataset(splits.val, image_size), max_val, seed),
        [INPUT_NAME],
        {"image_size": image_size, "layout": splits.layout, **splits.counts()},
        metric=metric,
    )


def default_detection_size(splits, native: int | None) -> int:
    """The detector's native input size (ssdlite: 320) or else the median image side rounded
    up to a multiple of 32, within [64, 640]."""
    if native:
        return native
    sides = [max(s.size) for s in splits.train[:500]] or [320]
    side = int(np.median(sides))
    return int(min(640, max(64, -(-side // 32) * 32)))
