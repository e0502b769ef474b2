"""A task binds data and model kind: datasets of ``(inputs: dict, target)``, the forward
call, the training loss, distillation, evaluation (in PyTorch and on onnxruntime), example
inputs for export/pruning, and numpy samples for onnxruntime.

``Task`` is classification (image or text: one integer label per sample, cross-entropy,
top-1 accuracy); ``detection_task.DetectionTask`` overrides the same methods for boxes. The
training loop, the distillation modifier and the INT8 choice only call these methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..errors import InputError


class _ImageDataset(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return {"input": x}, y


class _TensorDictDataset(Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor], labels: list[int]) -> None:
        self.tensors, self.labels = tensors, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.tensors.items()}, self.labels[i]


@dataclass
class Task:
    kind: str
    classes: list[str]
    train: Dataset
    val: Dataset
    input_names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    metric: str = "accuracy"
    """The headline metric ``evaluate`` / ``onnx_metrics`` return first (the INT8 budget's)."""

    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "image":
            return model(inputs["input"])
        return model(**inputs).logits

    # ---- training ------------------------------------------------------------------------
    def collate(self, batch: list) -> tuple[dict[str, torch.Tensor], Any]:
        inputs = {k: torch.stack([b[0][k] for b in batch]) for k in batch[0][0]}
        return inputs, torch.tensor([int(b[1]) for b in batch])

    def targets_to(self, targets: Any, device: torch.device) -> Any:
        return targets.to(device)

    def training_loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: Any
    ) -> tuple[torch.Tensor, Any]:
        """(loss, outputs): the outputs are what distillation compares with the teacher's."""
        logits = self.forward(model, inputs).float()
        return F.cross_entropy(logits, targets), logits

    def distillation_loss(
        self, outputs: Any, teacher: torch.nn.Module, inputs: dict[str, torch.Tensor], temperature: float
    ) -> torch.Tensor:
        from ..modifiers.training.distillation import kd_loss

        with torch.no_grad():
            teacher_logits = self.forward(teacher, inputs).float()
        return kd_loss(outputs, teacher_logits, temperature)

    # ---- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, device: torch.device, batch_size: int = 64
    ) -> dict[str, float]:
        """Top-1 accuracy on the validation split (PyTorch)."""
        from .loop import make_loader

        was_training = model.training
        model.eval()
        correct = total = 0
        for inputs, labels in make_loader(self.val, batch_size, collate=self.collate):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            logits = self.forward(model, inputs)
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            total += len(labels)
        model.train(was_training)
        return {"accuracy": correct / max(1, total)}

    def write_examples(self, baseline, optimized, samples: list, targets: list, out_dir) -> list:
        """Example images of both models' outputs for the report (detectors draw boxes)."""
        return []

    def onnx_metrics(self, path, samples: list, targets: list, batch_size: int = 64) -> dict[str, float]:
        """The same metrics for an exported model, on onnxruntime."""
        from ..evaluate import accuracy, run_onnx

        return {"accuracy": accuracy(run_onnx(path, samples, batch_size=batch_size), targets)}

    def example_inputs(self, batch: int = 1) -> dict[str, torch.Tensor]:
        sample, _ = self.val[0]
        return {k: v.unsqueeze(0).repeat(batch, *([1] * v.dim())) for k, v in sample.items()}

    def numpy_samples(
        self, dataset: Dataset, limit: int | None = None
    ) -> tuple[list[dict[str, np.ndarray]], list[int]]:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        samples, labels = [], []
        for i in range(n):
            inputs, y = dataset[i]
            samples.append({k: v.numpy() for k, v in inputs.items()})
            labels.append(int(y))
        return samples, labels


def _subset(ds: Dataset, limit: int, seed: int) -> Dataset:
    if limit <= 0 or limit >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:limit].tolist())


def image_task(splits, image_size: int, *, max_train: int = 0, max_val: int = 0, seed: int = 0) -> Task:
    from ..data.imagefolder import build_datasets

    train, val = build_datasets(splits, image_size)
    if train.classes != val.classes:
        raise InputError(f"classes differ between '{splits.train_dir}' and '{splits.val_dir}'")
    return Task(
        "image",
        list(train.classes),
        _ImageDataset(_subset(train, max_train, seed)),
        _ImageDataset(_subset(val, max_val, seed)),
        ["input"],
        {"image_size": image_size},
    )


def text_task(
    splits, tokenizer, max_length: int, *, max_train: int = 0, max_val: int = 0, seed: int = 0
) -> Task:
    def encode(rows):
        first, second = splits.texts(rows)
        enc = tokenizer(
            first, second, truncation=True, padding="max_length", max_length=max_length, return_tensors="pt"
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    train = _TensorDictDataset(encode(splits.train_rows), splits.labels(splits.train_rows))
    val = _TensorDictDataset(encode(splits.val_rows), splits.labels(splits.val_rows))
    return Task(
        "text",
        list(splits.classes),
        _subset(train, max_train, seed),
        _subset(val, max_val, seed),
        list(encode(splits.train_rows[:1]).keys()),
        {"max_length": max_length},
    )


def default_max_length(splits, tokenizer) -> int:
    first, second = splits.texts(splits.train_rows[:2000])
    lengths = [len(ids) for ids in tokenizer(first, second)["input_ids"]] if first else [16]
    p95 = int(np.percentile(lengths, 95))
    return int(min(256, max(16, -(-p95 // 8) * 8)))
