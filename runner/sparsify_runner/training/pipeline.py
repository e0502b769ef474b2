"""The training pathways' shared flow: validate inputs -> (dense fine-tune) -> prune /
hold masks while fine-tuning with distillation -> export ONNX -> INT8 -> evaluate and
benchmark on onnxruntime -> Report.

All input validation happens before the first training step, so bad input costs nothing.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import RunContext
from ..errors import InputError
from ..report import CandidateRecord, LayerReport, ModelStats, Report
from ..spec import ExperimentType
from .checkpoint import CheckpointStore, fingerprint
from .config import TrainConfig, parse_train_kwargs
from .loop import Trainer, distributed, prunable_sparsity
from .task import Task, default_max_length, image_task, text_task

log = logging.getLogger("sparsify.training")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"


# ---- inputs -------------------------------------------------------------------------------
def load_settings(ctx: RunContext, recipe_file: str) -> dict[str, Any]:
    import yaml

    from ..recipes import load_recipe

    defaults = yaml.safe_load((RECIPES / recipe_file).read_text(encoding="utf-8"))
    return load_recipe(defaults, ctx.experiment, ctx.recipe_path)


def inspect_data(ctx: RunContext):
    if ctx.experiment.use_case == "image-classification":
        from ..data.imagefolder import inspect_imagefolder

        splits = inspect_imagefolder(ctx.data_path)
        return splits, splits.classes, splits.train_count
    from ..data.text import inspect_text

    splits = inspect_text(ctx.data_path)
    return splits, splits.classes, len(splits.train_rows)


def build_task(ctx: RunContext, splits, cfg: TrainConfig, tokenizer) -> Task:
    seed = ctx.experiment.seed
    if ctx.experiment.use_case == "image-classification":
        from ..data.imagefolder import default_image_size

        size = cfg.image_size or default_image_size(splits)
        return image_task(
            splits, size, max_train=cfg.max_train_samples, max_val=cfg.max_val_samples, seed=seed
        )
    max_length = cfg.max_length or default_max_length(splits, tokenizer)
    return text_task(
        splits, tokenizer, max_length, max_train=cfg.max_train_samples, max_val=cfg.max_val_samples, seed=seed
    )


def make_store(
    ctx: RunContext, pathway: str, settings: dict, cfg: TrainConfig, extra: dict
) -> CheckpointStore:
    spec = ctx.experiment.to_wire()
    for volatile in ("output", "name"):
        spec.pop(volatile, None)
    fp = fingerprint({"pathway": pathway, "spec": spec, "settings": settings, "train": asdict(cfg), **extra})
    rank, _ = distributed()
    return CheckpointStore(ctx.checkpoint_dir, fp, ctx.save_checkpoints, enabled=rank == 0)


def init_distributed() -> None:
    rank, world = distributed()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def finish_distributed() -> None:
    """After training only rank 0 exports, benchmarks and publishes."""
    rank, world = distributed()
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        if rank != 0:
            raise SystemExit(0)


# ---- ONNX side ----------------------------------------------------------------------------
def want_int8(settings: dict[str, Any], level: float) -> bool:
    q = settings.get("quantize", "auto")
    if isinstance(q, str) and q != "auto":
        raise InputError(f"recipe 'quantize' must be auto, true or false, got '{q}'")
    return level > 0 if q == "auto" else bool(q)


def finalize(
    ctx: RunContext,
    task: Task,
    *,
    baseline_model: nn.Module,
    final_model: nn.Module,
    settings: dict[str, Any],
    mode: str,
    int8: bool,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """Export, quantize (keeping FP32 when INT8 costs too much accuracy), evaluate, benchmark."""
    from ..benchmark import measure_latency
    from ..evaluate import accuracy, run_onnx
    from ..modelstats import layer_sparsity, model_stats
    from .export import export_onnx

    exp = ctx.experiment
    build = ctx.work_dir / "_build"
    ctx.telemetry.stage("export")
    base_onnx = export_onnx(task, baseline_model, build / "baseline.onnx")
    fp32_onnx = export_onnx(task, final_model, build / "model_fp32.onnx")
    val_samples, val_labels = task.numpy_samples(task.val)
    notes: list[str] = []
    candidates: list[CandidateRecord] = []

    def onnx_accuracy(path: Path) -> float:
        return accuracy(run_onnx(path, val_samples, batch_size=cfg.eval_batch_size), val_labels)

    base_acc = onnx_accuracy(base_onnx)
    fp32_acc = onnx_accuracy(fp32_onnx)
    chosen = fp32_onnx
    int8_method = None
    if int8:
        from ..modifiers.quantization import quantize_int8

        ctx.telemetry.stage("quantize")
        calib, _ = task.numpy_samples(task.train, limit=cfg.calibration_samples)
        fmt = exp.deploy.quant_format if exp.deploy.quant_format != "auto" else "qdq"
        try:
            result = quantize_int8(
                fp32_onnx,
                calib,
                build / "model_int8.onnx",
                holdout=val_samples[:64],
                quant_format=fmt,
                show_progress=ctx.show_progress,
                time_budget_s=float(settings.get("int8_search_seconds", 120)),
            )
        except (ValueError, RuntimeError) as err:  # onnxruntime's quantizer on an unusual graph
            log.warning("INT8 quantization failed: %s", err)
            notes.append(f"static INT8 failed on this graph ({str(err).splitlines()[0][:120]}); kept FP32")
            result = None
        limit = float(settings.get("max_int8_accuracy_drop", 0.01))
        if result is None:
            pass
        elif not result.quantized or result.chosen == "fp32":
            candidates.extend(result.candidates)
            notes.extend(result.notes)
            notes.append("static INT8: no candidate was both faithful and faster on onnxruntime; kept FP32")
        else:
            candidates.extend(result.candidates)
            notes.extend(result.notes)
            int8_acc = onnx_accuracy(result.path)
            drop = fp32_acc - int8_acc
            candidates.append(
                CandidateRecord(name="fp32 (val split)", chosen=drop > limit, accuracy=round(fp32_acc, 5))
            )
            candidates.append(
                CandidateRecord(
                    name=f"int8 {result.chosen} (val split)",
                    chosen=drop <= limit,
                    accuracy=round(int8_acc, 5),
                )
            )
            if drop <= limit:
                chosen = result.path
                int8_method = (
                    f"static {fmt.upper()} ({result.chosen}) calibrated on {len(calib)} training samples"
                )
            else:
                notes.append(f"INT8 lost {drop:.2%} val accuracy (> {limit:.2%} allowed); kept FP32")
    shutil.copyfile(chosen, ctx.work_dir / "model.onnx")
    final_onnx = ctx.work_dir / "model.onnx"
    final_acc = onnx_accuracy(final_onnx)

    ctx.telemetry.stage("benchmark")
    latencies = measure_latency(
        [base_onnx, final_onnx],
        batch_size=exp.deploy.batch_size,
        device=exp.deploy.device,
        seconds=float(settings.get("benchmark_seconds", 3.0)),
        show_progress=ctx.show_progress,
    )
    baseline = model_stats(base_onnx)
    optimized = model_stats(final_onnx)
    baseline.accuracy, optimized.accuracy = round(base_acc, 5), round(final_acc, 5)
    baseline.latency, optimized.latency = latencies[0], latencies[1]
    ctx.telemetry.evaluation("accuracy", final_acc)
    return {
        "baseline": baseline,
        "optimized": optimized,
        "layers": layer_sparsity(final_onnx),
        "candidates": candidates,
        "notes": notes,
        "int8_method": int8_method,
        "fp32_accuracy": fp32_acc,
    }


def speedup_source(
    mode: str, speedup: float | None, *, int8: str | None, sparsity: float, macs: tuple[int, int] | None
) -> str:
    s = f"{speedup:.2f}x measured on onnxruntime" if speedup else "speedup not measured"
    q = f"INT8 ({int8})" if int8 else "no INT8"
    if mode == "channels" and macs:
        return (
            f"{s}: structured pruning removed whole channels/heads/neurons, MACs per sample "
            f"{macs[0]:,} -> {macs[1]:,} ({macs[0] / max(1, macs[1]):.2f}x fewer), plus {q}"
        )
    if mode == "unstructured":
        return (
            f"{s}: from {q}; the {sparsity:.0%} unstructured sparsity makes the compressed file smaller, "
            "but onnxruntime multiplies zeros like any weight, so it adds no speed (use --structure channels)"
        )
    if mode == "quantization-only":
        return f"{s}: from {q} only (no pruning at this optim level)"
    return f"{s}: baseline unchanged (optim level 0)"


def build_report(
    ctx: RunContext,
    *,
    mode: str,
    settings: dict[str, Any],
    result: dict[str, Any],
    history: list,
    notes: list[str],
    extra_layers: list[LayerReport] | None = None,
    macs: tuple[int, int] | None = None,
    sparsity: float = 0.0,
) -> Report:
    baseline: ModelStats = result["baseline"]
    optimized: ModelStats = result["optimized"]
    speedup = (
        baseline.latency.mean_ms / optimized.latency.mean_ms
        if baseline.latency and optimized.latency and optimized.latency.mean_ms > 0
        else None
    )
    settings = {
        **settings,
        "int8_method": result["int8_method"] or "none (FP32)",
        "fp32_accuracy": round(result["fp32_accuracy"], 5),
    }
    if macs:
        baseline.flops = baseline.flops or macs[0]
        optimized.flops = optimized.flops or macs[1]
    return Report(
        experiment=ctx.experiment.to_wire(),
        mode=mode,
        settings=settings,
        baseline=baseline,
        optimized=optimized,
        speedup=round(speedup, 4) if speedup else None,
        size_ratio=round(baseline.file_size_bytes / max(1, optimized.file_size_bytes), 4),
        compressed_size_ratio=round(
            baseline.compressed_size_bytes / max(1, optimized.compressed_size_bytes), 4
        ),
        layers=(extra_layers or []) + list(result["layers"]),
        candidates=result["candidates"],
        training=history,
        speedup_source=speedup_source(
            mode, speedup, int8=result["int8_method"], sparsity=sparsity, macs=macs
        ),
        notes=notes + result["notes"],
    )


def channel_layers(before: nn.Module, after: nn.Module) -> list[LayerReport]:
    """Per-layer width changes of a structurally pruned model (as LayerReport notes)."""
    out = []
    old = dict(before.named_modules())
    for name, m in after.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and name in old:
            o = old[name]
            a = o.out_channels if isinstance(o, nn.Conv2d) else o.out_features
            b = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            if a != b:
                out.append(
                    LayerReport(
                        name=name,
                        op_type=type(m).__name__,
                        parameters=m.weight.numel(),
                        sparsity=round(1 - b / a, 4),
                        note=f"outputs {a} -> {b} (structured)",
                    )
                )
    return out


def torch_param_stats(model: nn.Module) -> dict[str, Any]:
    return {
        "torch_parameters": sum(p.numel() for p in model.parameters()),
        "torch_sparsity": round(prunable_sparsity(model), 5),
    }


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu()


def run_dense_phase(
    ctx: RunContext,
    task: Task,
    model: nn.Module,
    cfg: TrainConfig,
    store: CheckpointStore,
    epochs: int,
    span: tuple[float, float],
) -> list:
    dense_cfg = TrainConfig(**{**asdict(cfg), "epochs": epochs})
    ctx.telemetry.stage("train-dense")
    trainer = Trainer(
        task,
        model,
        dense_cfg,
        "dense",
        store,
        [],
        ctx.telemetry,
        ctx.show_progress,
        ctx.experiment.seed,
        span,
    )
    history = trainer.fit()
    for r in history:
        r.epoch = round(r.epoch - epochs, 3)  # dense epochs count as negative: before the main phase
    return history


def common_setup(ctx: RunContext, recipe_file: str):
    """Settings, data, train config: all validated up front."""
    settings = load_settings(ctx, recipe_file)
    raw_cfg = parse_train_kwargs(ctx.experiment.train_kwargs)
    splits, classes, train_count = inspect_data(ctx)
    return settings, raw_cfg, splits, classes, train_count


def load_teacher(ctx: RunContext, classes: list[str]):
    """The --teacher model (None without one); it must already have a head for these classes."""
    exp = ctx.experiment
    if ctx.teacher_path is None:
        return None
    from ..models import load_model

    teacher = load_model(exp.use_case, ctx.teacher_path, arch=exp.arch, classes=classes)
    if teacher.head_replaced:
        raise InputError(
            f"teacher '{exp.teacher}' has no classifier head for these {len(classes)} classes; "
            "pass a teacher fine-tuned on this data"
        )
    return teacher


def elapsed(timings: dict[str, float], key: str, start: float) -> float:
    now = time.perf_counter()
    timings[key] = round(now - start, 3)
    return now


def is_training_aware(ctx: RunContext) -> bool:
    return ctx.experiment.type == ExperimentType.training_aware
