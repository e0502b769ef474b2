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
from ..cpu_features import int8_saturates
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
    from ..data.hf_datasets import inspect_hf, is_saved_dataset, split_data_kwargs

    options, _ = split_data_kwargs(ctx.experiment.train_kwargs)
    saved = ctx.experiment.use_case != "image-classification" and is_saved_dataset(ctx.data_path)
    if options and not saved:
        raise InputError(
            f"train-kwargs {sorted(options)} select columns/splits of a Hugging Face dataset, but data "
            f"'{ctx.experiment.data}' is not one (a save_to_disk folder or a hub id); drop them"
        )
    if ctx.experiment.use_case == "image-classification":
        from ..data.imagefolder import inspect_imagefolder

        splits = inspect_imagefolder(ctx.data_path)
        return splits, splits.classes, splits.train_count
    from ..data.text import inspect_text

    # a datasets save_to_disk folder (or a hub id saved so), else csv/jsonl files
    splits = inspect_hf(ctx.data_path, options, ctx.experiment.seed) if saved else inspect_text(ctx.data_path)
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
    qat_model: nn.Module | None = None,
    tokenizer=None,
) -> dict[str, Any]:
    """Export, quantize (keeping FP32 when INT8 costs too much accuracy), evaluate, benchmark.

    With ``qat_model`` (the final model after quantization-aware fine-tuning), INT8 is built
    from both the plain fine-tuned model (static PTQ) and the QAT one; the one that keeps more
    validation accuracy is used and ``int8_source`` says which ("ptq" / "qat" / None)."""
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
    int8_method = int8_source = None
    if int8:
        ctx.telemetry.stage("quantize")
        calib, _ = task.numpy_samples(task.train, limit=cfg.calibration_samples)
        fmt = exp.deploy.quant_format if exp.deploy.quant_format != "auto" else "qdq"
        sources = [("ptq", fp32_onnx, "static PTQ of the fine-tuned model", None)]
        if qat_model is not None:
            qat_onnx = export_onnx(task, qat_model, build / "model_qat_fp32.onnx")
            # QAT tuned the weights for the grid onnxruntime computes on this CPU (run_qat_phase)
            qat_grid = True if int8_saturates(exp.deploy.device) else None
            if qat_grid:
                notes.append(
                    "QAT simulated reduce_range (7-bit) weights and its INT8 model uses them: "
                    "onnxruntime's u8s8 kernels saturate with 8-bit weights on this CPU (no VNNI)"
                )
            sources.append(("qat", qat_onnx, "after quantization-aware fine-tuning", qat_grid))
        budget = float(settings.get("int8_search_seconds", 120)) / len(sources)
        limit = float(settings.get("max_int8_accuracy_drop", 0.01))
        fp32_record = CandidateRecord(name="fp32 (val split)", chosen=True, accuracy=round(fp32_acc, 5))
        candidates.append(fp32_record)
        best: tuple[float, float, str, Path, str] | None = None
        picks: dict[str, str] = {}
        for key, source, label, reduce_range in sources:
            out = build / f"model_int8_{key}.onnx"
            result = _static_int8(
                ctx, source, out, calib, val_samples, fmt, budget, notes, reduce_range=reduce_range
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
            acc = onnx_accuracy(result.path)
            candidates.append(
                CandidateRecord(
                    name=f"int8 {key} {result.chosen} (val split)", chosen=False, accuracy=round(acc, 5)
                )
            )
            drop = fp32_acc - acc
            if drop > limit:
                notes.append(f"INT8 ({label}) lost {drop:.2%} val accuracy (> {limit:.2%} allowed)")
                continue
            rank = (acc, result.speedup or 1.0)
            if best is None or rank > best[:2]:
                best = (*rank, key, result.path, f"static {fmt.upper()} ({result.chosen}), {label}")
        if best is None:
            notes.append("kept FP32: no INT8 model stayed within the accuracy budget and was faster")
        else:
            _, _, int8_source, chosen, int8_method = best
            int8_method += f", calibrated on {len(calib)} training samples"
            fp32_record.chosen = False
            for c in candidates:
                if c.name == picks[int8_source] or (
                    c.name.startswith(f"int8 {int8_source} ") and c.name.endswith("(val split)")
                ):
                    c.chosen = True
    shutil.copyfile(chosen, ctx.work_dir / "model.onnx")
    final_onnx = ctx.work_dir / "model.onnx"
    record_serving_info(ctx, task, final_onnx, tokenizer)
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
    if exp.eval_metric in ("f1", "recall"):  # macro scores next to accuracy; the chosen one headlines
        from ..evaluate import macro_f1, macro_recall

        for stats, path in ((baseline, base_onnx), (optimized, final_onnx)):
            outs = run_onnx(path, val_samples, batch_size=cfg.eval_batch_size)
            stats.f1 = round(macro_f1(outs, val_labels, len(task.classes)), 5)
            stats.recall = round(macro_recall(outs, val_labels, len(task.classes)), 5)
        ctx.telemetry.evaluation(exp.eval_metric, getattr(optimized, exp.eval_metric))
    shutil.rmtree(build, ignore_errors=True)  # intermediate exports are not results
    return {
        "baseline": baseline,
        "optimized": optimized,
        "layers": layer_sparsity(final_onnx),
        "candidates": candidates,
        "notes": notes,
        "int8_method": int8_method,
        "int8_source": int8_source,
        "fp32_accuracy": fp32_acc,
    }


def record_serving_info(ctx: RunContext, task: Task, model_path: Path, tokenizer) -> None:
    """Store the preprocessing and class names of training in model.onnx (``model_card``),
    and a text model's tokenizer in ``tokenizer/`` beside it, so ``sparsifyctl serve --task``
    turns an image or a sentence into exactly the tensors the model was trained on."""
    from .. import model_card

    use_case = ctx.experiment.use_case
    if task.kind == "image":
        from ..data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

        size = int(task.settings["image_size"])
        info = model_card.for_image(
            use_case, task.classes, size, IMAGENET_MEAN, IMAGENET_STD, input_name=task.input_names[0]
        )
    else:
        info = model_card.for_text(use_case, task.classes, task.input_names, int(task.settings["max_length"]))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(model_path.parent / model_card.TOKENIZER_DIR))
    model_card.write(model_path, info)


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
):
    """``quantize_int8`` on one FP32 export; None when onnxruntime's quantizer fails on it."""
    from ..modifiers.quantization import quantize_int8

    try:
        result = quantize_int8(
            source,
            calib,
            out,
            holdout=val_samples[:64],
            quant_format=fmt,
            show_progress=ctx.show_progress,
            time_budget_s=budget_s,
            reduce_range=reduce_range,
        )
    except (ValueError, RuntimeError) as err:  # onnxruntime's quantizer on an unusual graph
        log.warning("INT8 quantization failed: %s", err)
        notes.append(f"static INT8 failed on this graph ({str(err).splitlines()[0][:120]})")
        return None
    notes.extend(result.notes)
    return result


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
        "int8_source": result["int8_source"],
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
        size_ratio=round(optimized.file_size_bytes / max(1, baseline.file_size_bytes), 4),
        compressed_size_ratio=round(
            optimized.compressed_size_bytes / max(1, baseline.compressed_size_bytes), 4
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


def want_qat(settings: dict[str, Any], int8: bool) -> bool:
    q = settings.get("qat", "auto")
    if q not in ("auto", True, False):
        raise InputError(f"recipe 'qat' must be auto, true or false, got '{q}'")
    return int8 and q in ("auto", True)


def qat_epochs(settings: dict[str, Any], cfg: TrainConfig) -> int:
    """``qat_epochs`` from the recipe; 0 = auto: a quarter of the main phase, at least 1."""
    n = int(settings.get("qat_epochs", 0))
    if n < 0:
        raise InputError(f"recipe 'qat_epochs' must be >= 0, got {n}")
    return n or max(1, round(cfg.epochs / 4))


def run_qat_phase(
    ctx: RunContext,
    task: Task,
    model: nn.Module,
    cfg: TrainConfig,
    store: CheckpointStore,
    settings: dict[str, Any],
    *,
    teacher: nn.Module | None,
    keep_zeros: bool,
    epoch_offset: float,
    span: tuple[float, float],
) -> tuple[nn.Module, list]:
    """Quantization-aware fine-tuning of a copy of ``model`` (INT8 simulated in the forward
    pass, zeros held when ``keep_zeros``, distillation from ``teacher``). The caller builds
    INT8 from both this copy and ``model`` and keeps the one that measures better."""
    from ..modifiers.distillation import DistillationModifier
    from ..modifiers.masks import FixedMasks, MaskSet
    from ..modifiers.qat import FakeQuantModifier

    epochs = qat_epochs(settings, cfg)
    qat_model = copy_model(model)
    fake_quant = FakeQuantModifier(
        weight_bits=int(settings.get("qat_weight_bits", 8)),
        reduce_range=int8_saturates(ctx.experiment.deploy.device),
    )
    modifiers: list = [fake_quant]
    if keep_zeros:
        modifiers.append(FixedMasks(MaskSet.from_zeros(qat_model)))
    weight = float(settings.get("distillation_weight", 0.0))
    if teacher is not None and weight > 0:
        modifiers.append(
            DistillationModifier(
                teacher, weight=weight, temperature=float(settings.get("distillation_temperature", 2.0))
            )
        )
    phase_cfg = TrainConfig(
        **{
            **asdict(cfg),
            "epochs": epochs,
            "lr": cfg.lr * float(settings.get("qat_lr_scale", 0.1)),
            "warmup_fraction": 0.0,
        }
    )
    ctx.telemetry.stage("train-qat")
    trainer = Trainer(
        task,
        qat_model,
        phase_cfg,
        "qat",
        store,
        modifiers,
        ctx.telemetry,
        ctx.show_progress,
        ctx.experiment.seed + 1,
        span,
    )
    history = trainer.fit()
    qat_model = trainer.bare_model
    fake_quant.remove()
    for r in history:
        r.epoch = round(r.epoch + epoch_offset, 3)
    return qat_model.cpu().eval(), history


def common_setup(ctx: RunContext, recipe_file: str):
    """Settings, data, train config: all validated up front."""
    from ..data.hf_datasets import split_data_kwargs

    settings = load_settings(ctx, recipe_file)
    _, train_kwargs = split_data_kwargs(ctx.experiment.train_kwargs)  # data keys: see inspect_data
    raw_cfg = limit_samples(ctx.experiment, parse_train_kwargs(train_kwargs))
    # recipe errors before any training
    want_qat(settings, True)
    qat_epochs(settings, raw_cfg)
    splits, classes, train_count = inspect_data(ctx)
    return settings, raw_cfg, splits, classes, train_count


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
