"""Sparse-transfer: fine-tune a pre-sparsified model on the user's data with its sparsity
mask held fixed (pruned weights stay exactly zero), optional distillation from --teacher,
INT8, ONNX export, report. Without --model, a base model comes from the catalog."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import storage
from ..catalog import load_catalog, resolve_uri, select
from ..context import RunContext
from ..errors import InputError
from ..modifiers.base import Modifier
from ..modifiers.training.distillation import DistillationModifier
from ..modifiers.training.masks import FixedMasks, MaskSet
from ..recipes import int8_wanted
from ..report import Report
from ..training import pipeline as P


def choose_base_model(ctx: RunContext) -> tuple[Path, str | None, list[str], dict]:
    """--model, or the catalog entry the optim level picks."""
    exp = ctx.experiment
    if ctx.model_path is not None:
        return ctx.model_path, exp.arch, [], {}
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
    return path, exp.arch or entry.arch, [note], info


def run(ctx: RunContext) -> Report:
    exp = ctx.experiment
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ctx.telemetry.stage("load")
    torch.manual_seed(exp.seed)
    recipe, raw_cfg, splits, classes, train_count = P.common_setup(ctx)
    model_path, arch, notes, catalog_info = choose_base_model(ctx)
    loaded = P.load_task_model(ctx, model_path, arch, splits, classes, raw_cfg)
    teacher = P.load_teacher(ctx, splits, classes, raw_cfg, P.detector_size(loaded))
    cfg = raw_cfg.resolved(kind=loaded.kind, train_count=train_count)
    task = P.build_task(ctx, splits, cfg, loaded)
    model = loaded.module
    structured = loaded.structured
    masks = MaskSet.from_zeros(model, min_params=recipe.min_params)
    sparsity = masks.sparsity()
    notes += loaded.notes
    if sparsity == 0:
        notes.append(
            "the base model has no zero weights in its conv/linear layers: there is no mask to hold; "
            "this run is a plain fine-tune (+ INT8)"
        )
    int8 = int8_wanted(recipe.quantize, exp.optim_level)
    mode = (
        "channels"
        if structured
        else ("unstructured" if sparsity > 0 else ("quantization-only" if int8 else "baseline"))
    )
    effective = {
        **recipe.settings(),
        "mode": mode,
        "arch": loaded.arch,
        "classes": len(classes),
        "base_sparsity": round(sparsity, 5),
        "train": asdict(cfg),
        **task.settings,
        **catalog_info,
    }
    store = P.make_store(ctx, "sparse-transfer", effective, cfg, {"model": str(model_path)})
    P.init_distributed()
    baseline_model = P.copy_model(model)
    t = P.elapsed(timings, "load", t)

    modifiers: list[Modifier] = [FixedMasks(masks)]
    if teacher is not None and recipe.distillation_weight > 0:
        modifiers.append(
            DistillationModifier(
                teacher.module, weight=recipe.distillation_weight, temperature=recipe.distillation_temperature
            )
        )
    ctx.telemetry.stage("train")
    trainer = P.make_trainer(ctx, task, model, cfg, store, phase="main", modifiers=modifiers, span=(0.0, 0.8))
    history = trainer.fit()
    model = trainer.bare_model
    if trainer.resumed_from is not None:
        notes.append(f"resumed from a checkpoint at step {trainer.resumed_from} of {trainer.total_steps}")

    done = P.finish_training(
        ctx,
        task,
        model=model,
        baseline_model=baseline_model,
        recipe=recipe,
        cfg=cfg,
        store=store,
        int8=int8,
        qat_teacher=teacher.module if teacher is not None else None,
        keep_zeros=sparsity > 0,
        qat_epoch_offset=float(cfg.epochs),
        loaded=loaded,
        structured=structured,
        history=history,
        notes=notes,
        timings=timings,
        clock=t,
    )
    effective.update(
        P.torch_param_stats(done.model),
        torch_val_accuracy=round(done.final_accuracy, 5),
        mask_sparsity_after=round(masks.sparsity(), 5),
    )
    notes.append(
        "baseline = the base model as given, before fine-tuning on this data"
        + (
            " (its new classifier head is untrained, so its accuracy is chance level)"
            if loaded.head_replaced
            else ""
        )
    )
    report = P.build_report(
        ctx,
        mode=mode,
        settings=effective,
        result=done.result,
        history=done.history,
        notes=notes,
        sparsity=sparsity,
    )
    report.timings_s.update(timings)
    return report
