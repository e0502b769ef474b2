"""Training-aware: gradual pruning (unstructured GMP or structured channels/heads) while
fine-tuning a dense PyTorch model, distillation from the dense model (or --teacher), INT8,
ONNX export, report."""

from __future__ import annotations

from dataclasses import asdict

import torch

from ..context import RunContext
from ..modifiers.base import Modifier
from ..modifiers.training.distillation import DistillationModifier
from ..modifiers.training.gmp import GMPModifier
from ..modifiers.training.masks import MaskSet, classifier_name, prunable_weights
from ..modifiers.training.structured import StructuredPruner, count_macs
from ..recipes import (
    TrainingAwareRecipe,
    int8_wanted,
    macs_reduction_for_level,
    prunes,
    sparsity_for_level,
    training_mode,
)
from ..recipes.schema import DistillationConfig, GMPConfig, PruningScheduleConfig, StructuredPruningConfig
from ..report import Report
from ..spec import ExperimentType
from ..speedup import ChannelCounts
from ..training.config import TrainConfig
from ..training.finish import TrainingOutcome
from ..training.flow import TrainingPlan, run_training_pathway
from ..training.loop import distributed, prunable_sparsity
from ..training.reporting import ReportExtras, channel_layers
from ..training.setup import TrainingSetup


def run(ctx: RunContext) -> Report:
    return run_training_pathway(ctx, ExperimentType.training_aware, plan_run)


def plan_run(ctx: RunContext, setup: TrainingSetup) -> TrainingPlan:
    """Mode, targets and phases from the optim level and the recipe: dense fine-tuning when
    the model got a new head, then gradual pruning with distillation from the dense model."""
    exp, recipe, cfg, task, loaded = ctx.experiment, setup.recipe, setup.cfg, setup.task, setup.student
    level = exp.optim_level
    mode = training_mode(level, exp.structure)
    dense_epochs = (
        cfg.dense_epochs
        if cfg.dense_epochs >= 0
        else (max(1, cfg.epochs // 2) if loaded.head_replaced else 0)
    )
    sparsity = (
        recipe.sparsity
        if recipe.sparsity is not None
        else sparsity_for_level(ExperimentType.training_aware, level)
    )
    reduction = (
        recipe.macs_reduction
        if recipe.macs_reduction is not None
        else macs_reduction_for_level(ExperimentType.training_aware, level)
    )
    settings = {
        **recipe.settings(),
        "mode": mode,
        "arch": loaded.arch,
        "classes": len(setup.classes),
        "target_sparsity": sparsity if mode == "unstructured" else 0.0,
        "target_macs_reduction": reduction if mode == "channels" else 0.0,
        "dense_epochs": dense_epochs,
        "train": asdict(cfg),
        **task.settings,
    }
    main_epochs = cfg.epochs if (prunes(level) or dense_epochs == 0) and level > 0 else 0

    def main_modifiers(model: torch.nn.Module, teacher: torch.nn.Module | None) -> list[Modifier]:
        return main_phase_modifiers(recipe, mode, model, task, cfg, main_epochs, sparsity, reduction, teacher)

    def report_extras(outcome: TrainingOutcome, baseline_model: torch.nn.Module) -> ReportExtras:
        extras = ReportExtras(sparsity=prunable_sparsity(outcome.model))
        if mode == "channels":
            example = task.example_inputs(1)
            extras.channels = ChannelCounts(
                count_macs(baseline_model, example), count_macs(outcome.trained_model, example)
            )
            extras.layers = channel_layers(baseline_model, outcome.model)
        return extras

    distilling = setup.teacher is not None and recipe.distillation_weight > 0
    return TrainingPlan(
        mode=mode,
        settings=settings,
        int8=int8_wanted(recipe.quantize, level),
        main_epochs=main_epochs,
        main_stage="train-prune" if prunes(level) else "train",
        main_modifiers=main_modifiers,
        report_extras=report_extras,
        keep_zeros=mode == "unstructured",
        structured=mode == "channels",
        dense_epochs=dense_epochs,
        baseline_teaches=True,
        main_notes=[f"distillation teacher: {exp.teacher} (--teacher)"] if distilling else [],
    )


def main_phase_modifiers(
    recipe: TrainingAwareRecipe,
    mode: str,
    model: torch.nn.Module,
    task,
    cfg: TrainConfig,
    main_epochs: int,
    sparsity: float,
    reduction: float,
    teacher: torch.nn.Module | None,
) -> list[Modifier]:
    """The recipe's main-phase modifiers, each from its own config: GMP or channel pruning on
    the recipe's schedule, then distillation."""
    # the schedule in the Trainer's steps (fewer under torchrun: one global batch per step)
    steps_per_epoch = cfg.steps_per_epoch(len(task.train), distributed()[1])
    steps = steps_per_epoch * main_epochs
    heads = output_layers(model, task)
    modifiers: list[Modifier] = []
    if mode == "unstructured":
        gmp = recipe.config(GMPConfig)
        start, end = _schedule(gmp, steps)
        exclude: tuple[str, ...] = tuple(heads)
        if not gmp.prune_first_conv:
            first = next((n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)), None)
            exclude += (first,) if first else ()
        if not gmp.prune_depthwise:
            exclude += tuple(depthwise_convs(model))
        names = list(prunable_weights(model, min_params=gmp.min_params, exclude=exclude))
        modifiers.append(
            GMPModifier(
                MaskSet(model, names),
                init_sparsity=gmp.init_sparsity,
                final_sparsity=sparsity,
                start_step=start,
                end_step=end,
                update_every=max(1, round(gmp.update_every_epochs * steps_per_epoch)),
            )
        )
    elif mode == "channels":
        structured = recipe.config(StructuredPruningConfig)
        start, end = _schedule(structured, steps)
        modifiers.append(
            StructuredPruner(
                model,
                task.example_inputs(1),
                kind=task.kind,
                macs_reduction=reduction,
                start_step=start,
                end_step=end,
                events=structured.structured_events,
                round_to=structured.round_channels_to if task.kind != "text" else None,
                ignored=heads,
            )
        )
    distill = recipe.config(DistillationConfig)
    if teacher is not None and distill.distillation_weight > 0:
        modifiers.append(
            DistillationModifier(
                teacher, weight=distill.distillation_weight, temperature=distill.distillation_temperature
            )
        )
    return modifiers


def output_layers(model: torch.nn.Module, task) -> list[str]:
    """Layers no pruning touches: a classifier's head, or a detector's prediction layers (its
    class, box and fixed decode convs, whose channels are the outputs' meaning)."""
    if task.kind == "detection":
        return list(model.prediction_layers())
    head = classifier_name(model)
    return [head] if head else []


def _schedule(config: PruningScheduleConfig, steps: int) -> tuple[int, int]:
    """(first, last) pruning step of the main phase."""
    start = int(config.prune_start_fraction * steps)
    return start, max(start + 1, int(config.prune_end_fraction * steps))


def depthwise_convs(model: torch.nn.Module) -> list[str]:
    """Depthwise convs hold ~9 weights per channel: at high sparsity a layer-wise mask zeroes
    whole channels (measured: MobileNetV2 at 95% fell to chance), for ~1% of the weights."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
