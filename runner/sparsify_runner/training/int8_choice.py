"""INT8 after training: static INT8 of the fine-tuned model (PTQ) and, when QAT ran, of the
QAT model; the fastest one that keeps the val metric within the accuracy budget is shipped,
else the FP32 export."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from torch import nn

from ..context import RunContext
from ..cpu_features import int8_saturates
from ..report import CandidateRecord
from .export import export_onnx
from .setup import TrainingSetup

log = logging.getLogger("sparsify.training")

# The INT8 search may lose this share of a detector's confident boxes (vs FP32) in a candidate
# it proposes; the candidate must then also keep val mAP within max_int8_accuracy_drop, the
# real budget. Box agreement at a 0.25 score threshold flips on every detection near it: on
# YOLOv8n (digits data, benchmarks/detection.py) INT8 candidates agreed on 83-90% of the boxes
# while their val mAP matched or beat FP32's, so a tight box budget threw away 1.8x for nothing.
DETECTOR_INT8_BOX_BUDGET = 0.2
METRIC_NAMES = {"accuracy": "accuracy", "map": "mAP@0.5:0.95", "map50": "mAP@0.5"}


class Int8Source(StrEnum):
    """Which FP32 model an INT8 model was built from."""

    ptq = "ptq"
    """Static post-training quantization of the fine-tuned model."""
    qat = "qat"
    """The model after quantization-aware fine-tuning."""


@dataclass(frozen=True)
class Int8Choice:
    """The INT8 model that ships as model.onnx."""

    source: Int8Source
    path: Path
    method: str
    """How it was built, for the report: format, the search's pick, source, calibration."""


@dataclass
class Int8Decision:
    """The shipped INT8 model (None: FP32 ships) and what the report shows of the choice."""

    choice: Int8Choice | None
    candidates: list[CandidateRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    key: Int8Source
    onnx: Path
    label: str
    reduce_range: bool | None


def choose_int8(
    ctx: RunContext,
    setup: TrainingSetup,
    *,
    fp32_onnx: Path,
    qat_model: nn.Module | None,
    build_dir: Path,
    val_samples: list,
    val_metric: Callable[[Path], float],
    baseline_metric: float,
    fp32_metric: float,
) -> Int8Decision:
    """Quantize each source, check every result's ``val_metric`` against the budget left by
    fine-tuning and keep the fastest within it (ties: the higher metric)."""
    exp, task, recipe = ctx.experiment, setup.task, setup.recipe
    decision = Int8Decision(choice=None)
    notes, candidates = decision.notes, decision.candidates
    split = "val split" if task.metric == "accuracy" else f"val split, {METRIC_NAMES[task.metric]}"
    ctx.telemetry.stage("quantize")
    calib, _ = task.numpy_samples(task.train, limit=setup.cfg.calibration_samples)
    fmt = exp.deploy.quant_format if exp.deploy.quant_format != "auto" else "qdq"
    sources = [_Source(Int8Source.ptq, fp32_onnx, "static PTQ of the fine-tuned model", None)]
    if qat_model is not None:
        qat_onnx = export_onnx(task, qat_model, build_dir / "model_qat_fp32.onnx")
        # QAT tuned the weights for the grid onnxruntime computes on this CPU (run_qat_phase)
        qat_grid = True if int8_saturates(exp.deploy.device) else None
        if qat_grid:
            notes.append(
                "QAT simulated reduce_range (7-bit) weights and its INT8 model uses them: "
                "onnxruntime's u8s8 kernels saturate with 8-bit weights on this CPU (no VNNI)"
            )
        sources.append(_Source(Int8Source.qat, qat_onnx, "after quantization-aware fine-tuning", qat_grid))
    budget = recipe.int8_search_seconds / len(sources)
    limit, limit_words = _accuracy_limit(exp, recipe, baseline_metric, fp32_metric)
    fp32_record = CandidateRecord(name=f"fp32 ({split})", chosen=True, accuracy=round(fp32_metric, 5))
    candidates.append(fp32_record)
    best: Int8Choice | None = None
    best_rank: tuple[float, float] = (0.0, 0.0)
    picks: dict[Int8Source, str] = {}
    for source in sources:
        key, label = source.key, source.label
        result = _static_int8(
            ctx,
            source.onnx,
            build_dir / f"model_int8_{key}.onnx",
            calib,
            val_samples,
            fmt,
            budget,
            notes,
            reduce_range=source.reduce_range,
            candidate_seconds=recipe.int8_candidate_seconds,
            detector=task.kind == "detection",
            label=label,
        )
        if result is None:
            continue
        # a search's own pick is marked chosen only if its source is the one finally used
        candidates.extend(
            c.model_copy(update={"name": f"{key}: {c.name}", "chosen": False}) for c in result.candidates
        )
        picks[key] = f"{key}: {result.chosen}"
        if not result.quantized or result.chosen == "fp32":
            notes.append(f"static INT8 ({label}): no candidate was both faithful and faster")
            continue
        acc = val_metric(result.path)
        candidates.append(
            CandidateRecord(
                name=f"int8 {key} {result.chosen} ({split})", chosen=False, accuracy=round(acc, 5)
            )
        )
        drop = fp32_metric - acc
        if drop > limit:
            notes.append(
                f"INT8 ({label}) lost {drop:.2%} val {METRIC_NAMES[task.metric]} to the fine-tuned FP32 "
                f"model (> {limit:.2%} allowed: {limit_words})"
            )
            continue
        rank = (result.speedup or 1.0, acc)  # the fastest within the budget
        if best is None or rank > best_rank:
            best_rank = rank
            best = Int8Choice(key, result.path, f"static {fmt.upper()} ({result.chosen}), {label}")
    if best is None:
        notes.append("kept FP32: no INT8 model stayed within the accuracy budget and was faster")
        return decision
    decision.choice = Int8Choice(
        best.source, best.path, f"{best.method}, calibrated on {len(calib)} training samples"
    )
    fp32_record.chosen = False
    for c in candidates:
        if c.name == picks[best.source] or (
            c.name.startswith(f"int8 {best.source} ") and c.name.endswith(f"({split})")
        ):
            c.chosen = True
    return decision


def _accuracy_limit(exp, recipe, base_acc: float, fp32_acc: float) -> tuple[float, str]:
    """How much INT8 may lose to the fine-tuned FP32 model: what is left of the accuracy budget
    against the baseline (--max-accuracy-drop, else the optim level's), as in one-shot. When
    fine-tuning already spent all of it, the recipe's max_int8_accuracy_drop (the result is
    over budget either way; the report says so)."""
    from ..recipes.levels import accuracy_budget

    given = exp.max_accuracy_drop
    level_budget = given if given is not None else accuracy_budget(exp.optim_level)
    spent = base_acc - fp32_acc
    if level_budget - spent > 0:
        return level_budget - spent, f"{level_budget:.2%} budget against the baseline, {spent:+.2%} spent"
    return recipe.max_int8_accuracy_drop, "fine-tuning already spent the budget; max_int8_accuracy_drop"


def _static_int8(
    ctx: RunContext,
    source: Path,
    out: Path,
    calib: list,
    val_samples: list,
    fmt: str,
    budget_s: float,
    notes: list[str],
    *,
    reduce_range: bool | None = None,
    candidate_seconds: float = 1.5,
    detector: bool = False,
    label: str = "",
):
    """``quantize_int8`` on one FP32 export; None when onnxruntime's quantizer fails on it.
    A ``detector``'s decode stays FP32 and its candidates are compared by their boxes, with a
    looser box-agreement budget (``DETECTOR_INT8_BOX_BUDGET``): the val mAP check after the
    search is the real accuracy budget."""
    from ..modifiers.int8 import quantize_int8

    try:
        result = quantize_int8(
            source,
            calib,
            out,
            holdout=val_samples[:64],
            quant_format=fmt,
            show_progress=ctx.show_progress,
            time_budget_s=budget_s,
            bench_seconds=candidate_seconds,
            reduce_range=reduce_range,
            detector=detector,
            max_fidelity_loss=DETECTOR_INT8_BOX_BUDGET if detector else 0.01,
        )
    except (ValueError, RuntimeError) as err:  # onnxruntime's quantizer on an unusual graph
        log.warning("INT8 quantization failed: %s", err)
        notes.append(f"static INT8 failed on this graph ({str(err).splitlines()[0][:120]})")
        return None
    notes.extend(f"{n} ({label})" if label else n for n in result.notes)
    return result
