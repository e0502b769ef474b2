"""The one flow of both training pathways: load and check everything -> (dense fine-tune) ->
main phase with the pathway's modifiers -> QAT -> rank 0 only: export, INT8 choice,
evaluation, benchmark, model.pt -> Report.

A pathway supplies what differs as a ``TrainingPlan`` (and, optionally, how its model is
chosen); ``run_training_pathway`` does the rest."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..context import RunContext
from ..report import Report
from ..spec import ExperimentType
from .checkpoint import CheckpointStore, fingerprint
from .distributed import finish_distributed, init_distributed
from .finish import TrainedModels, TrainingOutcome, finish_training
from .loading import ModelChoice, copy_model, given_model
from .loop import distributed
from .phases import run_dense_phase, run_main_phase, run_qat_phase, with_epochs
from .reporting import ReportExtras, build_report, torch_param_stats
from .setup import TrainingSetup, load_setup

if TYPE_CHECKING:
    from ..modifiers.base import Modifier
    from ..report import EpochRecord


@dataclass
class TrainingPlan:
    """What one training pathway decided for this run."""

    mode: str
    """The report's mode: baseline / quantization-only / unstructured / channels."""
    settings: dict[str, Any]
    """The report's effective settings; they also key the checkpoints."""
    int8: bool
    """Build INT8 (and run QAT first when the recipe wants it)."""
    main_epochs: int
    """Epochs of the main phase; 0 skips it."""
    main_stage: str
    """The telemetry stage of the main phase."""
    main_modifiers: Callable[[nn.Module, nn.Module | None], list[Modifier]]
    """(model, teacher) -> the main phase's modifiers; the teacher is None when nothing teaches."""
    report_extras: Callable[[TrainingOutcome, nn.Module], ReportExtras]
    """(outcome, baseline model) -> what the pathway adds to the report."""
    keep_zeros: bool
    """QAT holds the model's zeros (an unstructured mask)."""
    structured: bool
    """Layer sizes differ from the stock architecture (model.pt records them)."""
    dense_epochs: int | None = None
    """Dense fine-tuning before the main phase; None: the pathway has none (and no
    ``train_dense`` timing)."""
    baseline_teaches: bool = False
    """Without --teacher, the baseline model is the distillation teacher."""
    checkpoint_key: dict[str, Any] = field(default_factory=dict)
    """More values that tell this run's checkpoints from another's."""
    notes: list[str] = field(default_factory=list)
    """Report notes known before training."""
    main_notes: list[str] = field(default_factory=list)
    """Report notes that hold only when the main phase runs."""


class Stopwatch:
    """Seconds per stage of a run, for the report's ``timings_s``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._start, 3)
        self._start = now


def run_training_pathway(
    ctx: RunContext,
    pathway: ExperimentType,
    plan_run: Callable[[RunContext, TrainingSetup], TrainingPlan],
    choose_model: Callable[[RunContext], ModelChoice] = given_model,
) -> Report:
    """``plan_run`` decides the run from what was loaded; ``pathway`` keys its checkpoints."""
    clock = Stopwatch()
    ctx.telemetry.stage("load")
    torch.manual_seed(ctx.experiment.seed)
    setup = load_setup(ctx, choose_model)
    plan = plan_run(ctx, setup)
    task, cfg, recipe = setup.task, setup.cfg, setup.recipe
    store = _checkpoint_store(ctx, pathway.value, plan.settings, cfg, plan.checkpoint_key)
    notes = [*setup.notes, *plan.notes]
    init_distributed()
    clock.lap("load")

    model = setup.student.module
    history: list[EpochRecord] = []
    dense_epochs = plan.dense_epochs or 0
    dense_share = 0.8 * dense_epochs / (dense_epochs + plan.main_epochs or 1)  # of the progress bar
    if dense_epochs:
        history += run_dense_phase(ctx, task, model, cfg, store, dense_epochs, (0.0, dense_share))
        notes.append(
            f"baseline = the model after {dense_epochs} epoch(s) of dense fine-tuning "
            "(its checkpoint had no head for these classes)"
            + ("" if setup.teacher or not plan.baseline_teaches else "; it is also the distillation teacher")
        )
    baseline_model = copy_model(model)
    if plan.dense_epochs is not None:
        clock.lap("train_dense")

    teacher = setup.teacher.module if setup.teacher else (baseline_model if plan.baseline_teaches else None)
    if plan.main_epochs:
        modifiers = plan.main_modifiers(model, teacher)
        notes += plan.main_notes
        ctx.telemetry.stage(plan.main_stage)
        main = run_main_phase(
            ctx, task, model, with_epochs(cfg, plan.main_epochs), store, modifiers, (dense_share, 0.8)
        )
        model = main.model
        history += main.history
        notes += main.notes
    qat_model = None
    if recipe.wants_qat(plan.int8):
        qat = run_qat_phase(
            ctx,
            task,
            model,
            cfg,
            store,
            recipe,
            teacher=teacher,
            keep_zeros=plan.keep_zeros,
            epoch_offset=float(plan.main_epochs),
            span=(0.8, 0.9),
        )
        qat_model = qat.model
        history += qat.history
    notes.extend(store.notes)
    finish_distributed()
    clock.lap("train")

    models = TrainedModels(baseline=baseline_model, trained=model.cpu().eval(), qat=qat_model)
    outcome = finish_training(ctx, setup, models, int8=plan.int8, structured=plan.structured)
    clock.lap("export_evaluate")

    extras = plan.report_extras(outcome, baseline_model)
    settings = {
        **plan.settings,
        **torch_param_stats(outcome.model),
        "torch_val_accuracy": round(outcome.final_accuracy, 5),
        **extras.settings,
    }
    report = build_report(
        ctx,
        mode=plan.mode,
        settings=settings,
        onnx=outcome.onnx,
        history=history,
        notes=notes + extras.notes,
        extras=extras,
    )
    report.timings_s.update(clock.timings)
    return report


def _checkpoint_store(
    ctx: RunContext, pathway: str, settings: dict, cfg, extra: dict[str, Any]
) -> CheckpointStore:
    """Checkpoints keyed by everything that shapes training (not the output or the name);
    only rank 0 writes them."""
    spec = ctx.experiment.to_wire()
    for volatile in ("output", "name"):
        spec.pop(volatile, None)
    fp = fingerprint({"pathway": pathway, "spec": spec, "settings": settings, "train": asdict(cfg), **extra})
    rank, _ = distributed()
    return CheckpointStore(ctx.checkpoint_dir, fp, ctx.save_checkpoints, enabled=rank == 0)
