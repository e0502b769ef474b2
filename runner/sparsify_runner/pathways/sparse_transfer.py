"""Sparse-transfer: fine-tune a pre-sparsified model on the user's data with its sparsity
mask held fixed (pruned weights stay exactly zero), optional distillation from --teacher,
INT8, ONNX export, report. Without --model, a base model comes from the catalog."""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from .. import storage
from ..catalog import load_catalog, resolve_uri, select
from ..context import RunContext
from ..errors import InputError
from ..modifiers.base import Modifier
from ..modifiers.training.distillation import DistillationModifier
from ..modifiers.training.masks import FixedMasks, MaskSet
from ..recipes import int8_wanted
from ..report import Report
from ..spec import ExperimentType
from ..training.finish import TrainingOutcome
from ..training.flow import TrainingPlan, run_training_pathway
from ..training.loading import ModelChoice
from ..training.reporting import ReportExtras
from ..training.setup import TrainingSetup


def run(ctx: RunContext) -> Report:
    return run_training_pathway(ctx, ExperimentType.sparse_transfer, plan_run, choose_model=choose_base_model)


def choose_base_model(ctx: RunContext) -> ModelChoice:
    """--model, or the catalog entry the optim level picks."""
    exp = ctx.experiment
    if ctx.model_path is not None:
        return ModelChoice(ctx.model_path, exp.arch)
    if ctx.catalog_path is None:
        raise InputError(
            "sparse-transfer without --model needs a base-model catalog; pass --catalog FILE "
            "(see examples/catalog/) or --model"
        )
    catalog = load_catalog(ctx.catalog_path)
    entry, candidates = select(catalog, exp.use_case, exp.optim_level)
    uri = resolve_uri(entry.uri, exp.catalog or str(ctx.catalog_path))
    path = storage.fetch(uri, what=f"catalog model '{entry.name}'")
    note = (
        f"base model '{entry.name}' chosen from the catalog at optim level {exp.optim_level} "
        f"({candidates.index(entry) + 1} of {len(candidates)} for {exp.use_case}, largest first; "
        f"sparsity {entry.sparsity:.0%}"
        + (f", accuracy {entry.accuracy:.3f} on {entry.dataset or 'its dataset'})" if entry.accuracy else ")")
    )
    info = {"catalog_entry": entry.name, "catalog_candidates": [c.name for c in candidates]}
    return ModelChoice(path, exp.arch or entry.arch, [note], info)


def plan_run(ctx: RunContext, setup: TrainingSetup) -> TrainingPlan:
    """Hold the base model's zeros (a fixed mask) while fine-tuning; distil from --teacher."""
    exp, recipe, cfg, loaded = ctx.experiment, setup.recipe, setup.cfg, setup.student
    masks = MaskSet.from_zeros(loaded.module, min_params=recipe.min_params)
    sparsity = masks.sparsity()
    notes = []
    if sparsity == 0:
        notes.append(
            "the base model has no zero weights in its conv/linear layers: there is no mask to hold; "
            "this run is a plain fine-tune (+ INT8)"
        )
    int8 = int8_wanted(recipe.quantize, exp.optim_level)
    mode = (
        "channels"
        if loaded.structured
        else ("unstructured" if sparsity > 0 else ("quantization-only" if int8 else "baseline"))
    )
    settings = {
        **recipe.settings(),
        "mode": mode,
        "arch": loaded.arch,
        "classes": len(setup.classes),
        "base_sparsity": round(sparsity, 5),
        "train": asdict(cfg),
        **setup.task.settings,
        **setup.choice.settings,
    }

    def main_modifiers(model: nn.Module, teacher: nn.Module | None) -> list[Modifier]:
        modifiers: list[Modifier] = [FixedMasks(masks)]
        if teacher is not None and recipe.distillation_weight > 0:
            modifiers.append(
                DistillationModifier(
                    teacher, weight=recipe.distillation_weight, temperature=recipe.distillation_temperature
                )
            )
        return modifiers

    def report_extras(outcome: TrainingOutcome, baseline_model: nn.Module) -> ReportExtras:
        return ReportExtras(
            settings={"mask_sparsity_after": round(masks.sparsity(), 5)},
            notes=[
                "baseline = the base model as given, before fine-tuning on this data"
                + (
                    " (its new classifier head is untrained, so its accuracy is chance level)"
                    if loaded.head_replaced
                    else ""
                )
            ],
            sparsity=sparsity,
        )

    return TrainingPlan(
        mode=mode,
        settings=settings,
        int8=int8,
        main_epochs=cfg.epochs,
        main_stage="train",
        main_modifiers=main_modifiers,
        report_extras=report_extras,
        keep_zeros=sparsity > 0,
        structured=loaded.structured,
        checkpoint_key={"model": str(setup.choice.path)},
        notes=notes,
    )
