"""The student and teacher models of a training run, loaded for the run's classes and input size."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..context import RunContext
from ..errors import InputError
from .config import TrainConfig

if TYPE_CHECKING:
    from ..models import LoadedModel


@dataclass
class ModelChoice:
    """Which model a pathway trains, and what the choice adds to the report."""

    path: Path | None
    arch: str | None
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    """Report settings of the choice (sparse-transfer: the catalog entry and its candidates)."""


def given_model(ctx: RunContext) -> ModelChoice:
    """--model and --arch, as the user passed them."""
    return ModelChoice(ctx.model_path, ctx.experiment.arch)


def load_task_model(
    ctx: RunContext, path, arch: str | None, splits, classes: list[str], cfg: TrainConfig
) -> LoadedModel:
    """``models.load_model`` with the run's input size for detectors (train-kwargs
    ``image_size``, else the checkpoint's, the architecture's or the data's)."""
    from ..models import load_model

    kwargs = {}
    if ctx.experiment.is_detection:
        from .detection_task import default_detection_size

        kwargs = {"image_size": cfg.image_size or None, "default_size": default_detection_size(splits, None)}
    return load_model(ctx.experiment.use_case, path, arch=arch, classes=classes, **kwargs)


def detector_size(loaded: LoadedModel) -> int | None:
    """A detector's static input size (its teacher must run at it); None for other models."""
    return int(loaded.module.image_size) if loaded.kind == "detection" else None


def load_teacher(
    ctx: RunContext, splits, classes: list[str], cfg: TrainConfig, size: int | None = None
) -> LoadedModel | None:
    """The --teacher model (None without one); it must already have a head for these classes
    (and, for a detector, run at the student's input size ``size``)."""
    exp = ctx.experiment
    if ctx.teacher_path is None:
        return None
    if size is not None:
        cfg = dataclasses.replace(cfg, image_size=size)
    teacher = load_task_model(ctx, ctx.teacher_path, exp.arch, splits, classes, cfg)
    if teacher.head_replaced:
        raise InputError(
            f"teacher '{exp.teacher}' has no classifier head for these {len(classes)} classes; "
            "pass a teacher fine-tuned on this data"
        )
    return teacher


def copy_model(model: nn.Module) -> nn.Module:
    """A CPU copy that later training leaves untouched (the baseline, the QAT student)."""
    return copy.deepcopy(model).cpu()
