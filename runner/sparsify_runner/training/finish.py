"""After training (rank 0 only): export ONNX, choose INT8 or FP32, evaluate and benchmark the
shipped model.onnx beside the baseline's export, and save model.pt."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import RunContext
from ..report import CandidateRecord, LayerReport, ModelStats, set_metrics
from .export import export_onnx, save_torch_artifact
from .int8_choice import Int8Choice, Int8Source, choose_int8
from .loop import evaluate
from .serving_card import record_serving_info
from .setup import TrainingSetup

EXAMPLES_DIR = "examples"


@dataclass
class TrainedModels:
    """The PyTorch models training produced, on the CPU."""

    baseline: nn.Module
    """What the optimized model is compared with: as given, or after the dense phase."""
    trained: nn.Module
    """After the main phase."""
    qat: nn.Module | None = None
    """After quantization-aware fine-tuning; None when QAT did not run."""


@dataclass
class OnnxOutcome:
    """model.onnx as shipped, measured beside the baseline's export on the val split."""

    baseline: ModelStats
    optimized: ModelStats
    layers: list[LayerReport]
    candidates: list[CandidateRecord]
    notes: list[str]
    int8: Int8Choice | None
    """The INT8 model that ships; None: model.onnx is the FP32 export."""
    fp32_accuracy: float
    """The fine-tuned FP32 export's headline val metric (accuracy, or mAP)."""


@dataclass
class TrainingOutcome:
    """What ``finish_training`` hands back to the pathway for its report."""

    model: nn.Module
    """The model behind model.onnx and model.pt (the QAT weights when their INT8 won)."""
    trained_model: nn.Module
    """The model after the main phase (before the QAT swap)."""
    onnx: OnnxOutcome
    final_accuracy: float
    """``model``'s headline val metric in PyTorch."""


def finish_training(
    ctx: RunContext, setup: TrainingSetup, models: TrainedModels, *, int8: bool, structured: bool
) -> TrainingOutcome:
    """model.onnx and its measurements, then model.pt from the weights behind it. ``structured``:
    the layer sizes differ from the stock architecture (model.pt records them)."""
    onnx = export_and_measure(ctx, setup, models, int8=int8)
    # model.onnx was built from the QAT weights when their INT8 won: model.pt holds them too
    qat_won = onnx.int8 is not None and onnx.int8.source is Int8Source.qat
    shipped = models.qat if qat_won and models.qat is not None else models.trained
    student = setup.student
    save_torch_artifact(
        setup.task, shipped, student.arch, student.tokenizer, ctx.work_dir, structured=structured
    )
    final_accuracy = evaluate(setup.task, shipped, torch.device("cpu"))
    return TrainingOutcome(
        model=shipped, trained_model=models.trained, onnx=onnx, final_accuracy=final_accuracy
    )


def export_and_measure(
    ctx: RunContext, setup: TrainingSetup, models: TrainedModels, *, int8: bool
) -> OnnxOutcome:
    """Export, quantize (keeping FP32 when INT8 costs too much accuracy), evaluate, benchmark.

    With ``models.qat``, INT8 is built from both the plain fine-tuned model (static PTQ) and
    the QAT one; ``int8_choice.choose_int8`` says which one ships."""
    from ..benchmark import measure_latency
    from ..evaluate import run_onnx
    from ..modelstats import layer_sparsity, model_stats

    exp, task, cfg = ctx.experiment, setup.task, setup.cfg
    build = ctx.work_dir / "_build"
    ctx.telemetry.stage("export")
    base_onnx = export_onnx(task, models.baseline, build / "baseline.onnx")
    fp32_onnx = export_onnx(task, models.trained, build / "model_fp32.onnx")
    val_samples, val_labels = task.numpy_samples(task.val)
    notes: list[str] = []
    candidates: list[CandidateRecord] = []

    def onnx_metrics(path: Path) -> dict[str, Any]:
        return task.onnx_metrics(path, val_samples, val_labels, cfg.eval_batch_size)

    base_metrics = onnx_metrics(base_onnx)
    fp32_metrics = onnx_metrics(fp32_onnx)
    fp32_acc = fp32_metrics[task.metric]
    chosen = fp32_onnx
    int8_choice = None
    if int8:
        decision = choose_int8(
            ctx,
            setup,
            fp32_onnx=fp32_onnx,
            qat_model=models.qat,
            build_dir=build,
            val_samples=val_samples,
            val_metric=lambda path: onnx_metrics(path)[task.metric],
            baseline_metric=base_metrics[task.metric],
            fp32_metric=fp32_acc,
        )
        notes += decision.notes
        candidates += decision.candidates
        int8_choice = decision.choice
        if int8_choice is not None:
            chosen = int8_choice.path
    final_onnx = ctx.work_dir / "model.onnx"
    shutil.copyfile(chosen, final_onnx)
    record_serving_info(ctx, task, final_onnx, setup.student.tokenizer)
    final_metrics = onnx_metrics(final_onnx)
    final_acc = final_metrics[task.metric]
    examples_dir = ctx.work_dir / EXAMPLES_DIR
    examples = task.write_examples(base_onnx, final_onnx, val_samples, val_labels, examples_dir)
    if examples:
        notes.append(
            f"{len(examples)} example images (baseline vs optimized detections, score >= 0.25; ground "
            f"truth dashed) in {EXAMPLES_DIR}/"
        )

    ctx.telemetry.stage("benchmark")
    latencies = measure_latency(
        [base_onnx, final_onnx],
        batch_size=exp.deploy.batch_size,
        device=exp.deploy.device,
        seconds=setup.recipe.benchmark_seconds,
        show_progress=ctx.show_progress,
    )
    baseline = model_stats(base_onnx)
    optimized = model_stats(final_onnx)
    set_metrics(baseline, base_metrics)
    set_metrics(optimized, final_metrics)
    baseline.latency, optimized.latency = latencies[0], latencies[1]
    contention = latencies[0].contention_note()
    if contention:
        notes.append(contention)
    ctx.telemetry.evaluation(task.metric, final_acc)
    if exp.eval_metric in ("f1", "recall"):  # macro scores next to accuracy; the chosen one headlines
        from ..evaluate import macro_f1, macro_recall

        for stats, path in ((baseline, base_onnx), (optimized, final_onnx)):
            outs = run_onnx(path, val_samples, batch_size=cfg.eval_batch_size)
            stats.f1 = round(macro_f1(outs, val_labels, len(task.classes)), 5)
            stats.recall = round(macro_recall(outs, val_labels, len(task.classes)), 5)
        ctx.telemetry.evaluation(exp.eval_metric, getattr(optimized, exp.eval_metric))
    shutil.rmtree(build, ignore_errors=True)  # intermediate exports are not results
    return OnnxOutcome(
        baseline=baseline,
        optimized=optimized,
        layers=layer_sparsity(final_onnx),
        candidates=candidates,
        notes=list(dict.fromkeys(notes)),  # both INT8 sources may say the same
        int8=int8_choice,
        fp32_accuracy=fp32_acc,
    )
