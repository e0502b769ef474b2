"""Everything a training run loads and checks before its first step: the typed recipe, the
data, the train config, the student and teacher models, and the ``Task`` that binds them.

All input validation happens here, so bad input costs no training time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from ..errors import InputError
from ..spec import UseCase
from .config import TrainConfig, parse_train_kwargs
from .loading import ModelChoice, detector_size, load_task_model, load_teacher
from .task import Task, default_max_length, image_task, text_task

if TYPE_CHECKING:
    from ..models import LoadedModel
    from ..recipes import TrainingRecipe


@dataclass
class TrainingSetup:
    """What ``load_setup`` hands to the pathway's plan and to the training flow."""

    recipe: TrainingRecipe
    cfg: TrainConfig
    """Train-kwargs with the automatic values resolved for this model and data."""
    task: Task
    student: LoadedModel
    """The model to train, as loaded (its ``module`` is trained in place)."""
    teacher: LoadedModel | None
    """The --teacher model; None without one."""
    classes: list[str]
    choice: ModelChoice

    @property
    def notes(self) -> list[str]:
        """The report notes of choosing and loading the student."""
        return [*self.choice.notes, *self.student.notes]


def load_setup(ctx: RunContext, choose_model: Callable[[RunContext], ModelChoice]) -> TrainingSetup:
    """Recipe, data and train config first (cheap checks), then the models, then the task."""
    from ..data.hf_datasets import split_data_kwargs
    from ..recipes import load_recipe

    recipe = load_recipe(ctx.experiment, ctx.recipe_path)
    _, train_kwargs = split_data_kwargs(ctx.experiment.train_kwargs)  # data keys: see inspect_data
    raw_cfg = limit_samples(ctx.experiment, parse_train_kwargs(train_kwargs))
    splits, classes, train_count = inspect_data(ctx)
    choice = choose_model(ctx)
    student = load_task_model(ctx, choice.path, choice.arch, splits, classes, raw_cfg)
    teacher = load_teacher(ctx, splits, classes, raw_cfg, detector_size(student))
    cfg = raw_cfg.resolved(kind=student.kind, train_count=train_count)
    task = build_task(ctx, splits, cfg, student)
    return TrainingSetup(
        recipe=recipe, cfg=cfg, task=task, student=student, teacher=teacher, classes=classes, choice=choice
    )


def inspect_data(ctx: RunContext) -> tuple[Any, list[str], int]:
    """(splits, class names, training-sample count) of the run's data, each format checked."""
    from ..data.hf_datasets import inspect_hf, is_saved_dataset, split_data_kwargs

    options, _ = split_data_kwargs(ctx.experiment.train_kwargs)
    if ctx.experiment.is_detection:
        from ..data.detection import inspect_detection

        if options:
            raise InputError(
                f"train-kwargs {sorted(options)} select columns/splits of a Hugging Face dataset; object "
                "detection reads a YOLO or COCO folder, drop them"
            )
        splits = inspect_detection(ctx.data_path)
        if not splits.counts()["val_boxes"]:
            raise InputError(
                f"data '{ctx.experiment.data}': the val split has no boxes, so mAP cannot be measured; "
                "add labelled validation images"
            )
        return splits, splits.classes, len(splits.train)
    saved = ctx.experiment.use_case != UseCase.image_classification and is_saved_dataset(ctx.data_path)
    if options and not saved:
        raise InputError(
            f"train-kwargs {sorted(options)} select columns/splits of a Hugging Face dataset, but data "
            f"'{ctx.experiment.data}' is not one (a save_to_disk folder or a hub id); drop them"
        )
    if ctx.experiment.use_case == UseCase.image_classification:
        from ..data.imagefolder import inspect_imagefolder

        splits = inspect_imagefolder(ctx.data_path)
        return splits, splits.classes, splits.train_count
    from ..data.text import inspect_text

    # a datasets save_to_disk folder (or a hub id saved so), else csv/jsonl files
    splits = inspect_hf(ctx.data_path, options, ctx.experiment.seed) if saved else inspect_text(ctx.data_path)
    return splits, splits.classes, len(splits.train_rows)


def limit_samples(exp, cfg: TrainConfig) -> TrainConfig:
    """``--train-samples`` / ``--val-samples`` are the spec's spelling of max_train/val_samples."""
    for flag, key, value in (
        ("--train-samples", "max_train_samples", exp.train_samples),
        ("--val-samples", "max_val_samples", exp.val_samples),
    ):
        if value is None:
            continue
        if getattr(cfg, key) not in (0, value):
            raise InputError(
                f"{flag} {value} and train-kwargs '{key}' {getattr(cfg, key)} disagree; pass one"
            )
        setattr(cfg, key, value)
    return cfg


def build_task(ctx: RunContext, splits, cfg: TrainConfig, loaded: LoadedModel) -> Task:
    """The use case's ``Task`` over the data, at the model's input size or token length."""
    seed = ctx.experiment.seed
    tokenizer = loaded.tokenizer
    if ctx.experiment.is_detection:
        from .detection_task import detection_task

        return detection_task(
            splits,
            loaded.module.image_size,
            metric="map50" if ctx.experiment.eval_metric == "mAP50" else "map",
            max_train=cfg.max_train_samples,
            max_val=cfg.max_val_samples,
            seed=seed,
        )
    if ctx.experiment.use_case == UseCase.image_classification:
        from ..data.imagefolder import default_image_size

        size = cfg.image_size or default_image_size(splits)
        return image_task(
            splits, size, max_train=cfg.max_train_samples, max_val=cfg.max_val_samples, seed=seed
        )
    max_length = cfg.max_length or default_max_length(splits, tokenizer)
    return text_task(
        splits, tokenizer, max_length, max_train=cfg.max_train_samples, max_val=cfg.max_val_samples, seed=seed
    )
