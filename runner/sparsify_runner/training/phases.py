"""The training phases of both training pathways: dense fine-tuning, the main phase (the
pathway's pruning / mask modifiers) and quantization-aware fine-tuning (QAT)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from ..context import RunContext
from ..cpu_features import int8_saturates
from .checkpoint import CheckpointStore
from .config import TrainConfig
from .loading import copy_model
from .loop import Trainer
from .task import Task

if TYPE_CHECKING:
    from ..modifiers.base import Modifier
    from ..recipes import TrainingRecipe
    from ..report import EpochRecord


@dataclass
class PhaseResult:
    """A trained model, its epochs and what the report should say about the phase."""

    model: nn.Module
    history: list[EpochRecord]
    notes: list[str] = field(default_factory=list)


def make_trainer(
    ctx: RunContext,
    task: Task,
    model: nn.Module,
    cfg: TrainConfig,
    store: CheckpointStore,
    *,
    phase: str,
    modifiers: list | None = None,
    span: tuple[float, float] = (0.0, 1.0),
    seed_offset: int = 0,
) -> Trainer:
    """The one way the pathways build a ``Trainer``: telemetry, progress and seed from the run."""
    return Trainer(
        task=task,
        model=model,
        cfg=cfg,
        phase=phase,
        store=store,
        modifiers=list(modifiers or []),
        telemetry=ctx.telemetry,
        show_progress=ctx.show_progress,
        seed=ctx.experiment.seed + seed_offset,
        progress_span=span,
    )


def with_epochs(cfg: TrainConfig, epochs: int, **changes: Any) -> TrainConfig:
    """``cfg`` for one phase of training."""
    return TrainConfig(**{**asdict(cfg), "epochs": epochs, **changes})


def run_dense_phase(
    ctx: RunContext,
    task: Task,
    model: nn.Module,
    cfg: TrainConfig,
    store: CheckpointStore,
    epochs: int,
    span: tuple[float, float],
) -> list[EpochRecord]:
    """Plain fine-tuning of ``model`` in place; its epochs count as negative (before the main phase)."""
    ctx.telemetry.stage("train-dense")
    trainer = make_trainer(ctx, task, model, with_epochs(cfg, epochs), store, phase="dense", span=span)
    history = trainer.fit()
    for r in history:
        r.epoch = round(r.epoch - epochs, 3)
    return history


def run_main_phase(
    ctx: RunContext,
    task: Task,
    model: nn.Module,
    cfg: TrainConfig,
    store: CheckpointStore,
    modifiers: list[Modifier],
    span: tuple[float, float],
) -> PhaseResult:
    """Fine-tuning with the pathway's modifiers (``cfg.epochs`` of them), resumed from a
    checkpoint when the store holds one."""
    trainer = make_trainer(ctx, task, model, cfg, store, phase="main", modifiers=modifiers, span=span)
    history = trainer.fit()
    notes = []
    if trainer.resumed_from is not None:
        notes.append(f"resumed from a checkpoint at step {trainer.resumed_from} of {trainer.total_steps}")
    return PhaseResult(trainer.bare_model, history, notes)


def run_qat_phase(
    ctx: RunContext,
    task: Task,
    model: nn.Module,
    cfg: TrainConfig,
    store: CheckpointStore,
    recipe: TrainingRecipe,
    *,
    teacher: nn.Module | None,
    keep_zeros: bool,
    epoch_offset: float,
    span: tuple[float, float],
) -> PhaseResult:
    """Quantization-aware fine-tuning of a copy of ``model`` (INT8 simulated in the forward
    pass, zeros held when ``keep_zeros``, distillation from ``teacher``). The caller builds
    INT8 from both this copy and ``model`` and keeps the one that measures better."""
    from ..modifiers.training.distillation import DistillationModifier
    from ..modifiers.training.masks import FixedMasks, MaskSet
    from ..modifiers.training.qat import FakeQuantModifier

    qat_model = copy_model(model)
    # FakeQuantModifier.finalize puts the plain layers back when training ends
    modifiers: list = [
        FakeQuantModifier(
            weight_bits=recipe.qat_weight_bits, reduce_range=int8_saturates(ctx.experiment.deploy.device)
        )
    ]
    if keep_zeros:
        modifiers.append(FixedMasks(MaskSet.from_zeros(qat_model)))
    if teacher is not None and recipe.distillation_weight > 0:
        modifiers.append(
            DistillationModifier(
                teacher, weight=recipe.distillation_weight, temperature=recipe.distillation_temperature
            )
        )
    phase_cfg = with_epochs(
        cfg, recipe.qat_epoch_count(cfg.epochs), lr=cfg.lr * recipe.qat_lr_scale, warmup_fraction=0.0
    )
    ctx.telemetry.stage("train-qat")
    trainer = make_trainer(
        ctx, task, qat_model, phase_cfg, store, phase="qat", modifiers=modifiers, span=span, seed_offset=1
    )
    history = trainer.fit()
    qat_model = trainer.bare_model
    for r in history:
        r.epoch = round(r.epoch + epoch_offset, 3)
    return PhaseResult(qat_model.cpu().eval(), history)
