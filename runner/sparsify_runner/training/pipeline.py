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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import RunContext
from ..cpu_features import int8_saturates
from ..errors import InputError
from ..recipes import TrainingRecipe
from ..report import CandidateRecord, LayerReport, ModelStats, Report, measured_speedup, set_metrics
from ..speedup import ChannelCounts, explain_speedup
from .checkpoint import CheckpointStore, fingerprint
from .config import TrainConfig, parse_train_kwargs
from .loop import Trainer, distributed, prunable_sparsity
from .task import Task, default_max_length, image_task, text_task

log = logging.getLogger("sparsify.training")


# ---- inputs -------------------------------------------------------------------------------
def inspect_data(ctx: RunContext):
    from ..data.hf_datasets import inspect_hf, is_saved_dataset, split_data_kwargs

    options, _ = split_data_kwargs(ctx.experiment.train_kwargs)
    if ctx.experiment.use_case == "object-detection":
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


def build_task(ctx: RunContext, splits, cfg: TrainConfig, loaded) -> Task:
    seed = ctx.experiment.seed
    tokenizer = loaded.tokenizer
    if ctx.experiment.use_case == "object-detection":
        from .detection_task import detection_task

        return detection_task(
            splits,
            loaded.module.image_size,
            metric="map50" if ctx.experiment.eval_metric == "mAP50" else "map",
            max_train=cfg.max_train_samples,
            max_val=cfg.max_val_samples,
            seed=seed,
        )
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
def finalize(
    ctx: RunContext,
    task: Task,
    *,
    baseline_model: nn.Module,
    final_model: nn.Module,
    recipe: TrainingRecipe,
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
    from ..evaluate import run_onnx
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
    split = "val split" if task.metric == "accuracy" else f"val split, {METRIC_NAMES[task.metric]}"

    def onnx_metrics(path: Path) -> dict[str, Any]:
        return task.onnx_metrics(path, val_samples, val_labels, cfg.eval_batch_size)

    base_metrics = onnx_metrics(base_onnx)
    fp32_metrics = onnx_metrics(fp32_onnx)
    fp32_acc = fp32_metrics[task.metric]
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
        budget = recipe.int8_search_seconds / len(sources)
        limit, limit_words = _int8_accuracy_limit(exp, recipe, base_metrics[task.metric], fp32_acc)
        fp32_record = CandidateRecord(name=f"fp32 ({split})", chosen=True, accuracy=round(fp32_acc, 5))
        candidates.append(fp32_record)
        best: tuple[float, float, str, Path, str] | None = None
        picks: dict[str, str] = {}
        for key, source, label, reduce_range in sources:
            out = build / f"model_int8_{key}.onnx"
            result = _static_int8(
                ctx,
                source,
                out,
                calib,
                val_samples,
                fmt,
                budget,
                notes,
                reduce_range=reduce_range,
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
            acc = onnx_metrics(result.path)[task.metric]
            candidates.append(
                CandidateRecord(
                    name=f"int8 {key} {result.chosen} ({split})", chosen=False, accuracy=round(acc, 5)
                )
            )
            drop = fp32_acc - acc
            if drop > limit:
                notes.append(
                    f"INT8 ({label}) lost {drop:.2%} val {METRIC_NAMES[task.metric]} to the fine-tuned FP32 "
                    f"model (> {limit:.2%} allowed: {limit_words})"
                )
                continue
            rank = (result.speedup or 1.0, acc)  # the fastest within the budget
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
                    c.name.startswith(f"int8 {int8_source} ") and c.name.endswith(f"({split})")
                ):
                    c.chosen = True
    shutil.copyfile(chosen, ctx.work_dir / "model.onnx")
    final_onnx = ctx.work_dir / "model.onnx"
    record_serving_info(ctx, task, final_onnx, tokenizer)
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
        seconds=recipe.benchmark_seconds,
        show_progress=ctx.show_progress,
    )
    baseline = model_stats(base_onnx)
    optimized = model_stats(final_onnx)
    set_metrics(baseline, base_metrics)
    set_metrics(optimized, final_metrics)
    baseline.latency, optimized.latency = latencies[0], latencies[1]
    ctx.telemetry.evaluation(task.metric, final_acc)
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
        "notes": list(dict.fromkeys(notes)),  # both INT8 sources may say the same
        "int8_method": int8_method,
        "int8_source": int8_source,
        "fp32_accuracy": fp32_acc,
    }


def _int8_accuracy_limit(exp, recipe, base_acc: float, fp32_acc: float) -> tuple[float, str]:
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


EXAMPLES_DIR = "examples"
# The INT8 search may lose this share of a detector's confident boxes (vs FP32) in a candidate
# it proposes; the candidate must then also keep val mAP within max_int8_accuracy_drop, the
# real budget. Box agreement at a 0.25 score threshold flips on every detection near it: on
# YOLOv8n (digits data, benchmarks/detection.py) INT8 candidates agreed on 83-90% of the boxes
# while their val mAP matched or beat FP32's, so a tight box budget threw away 1.8x for nothing.
DETECTOR_INT8_BOX_BUDGET = 0.2
METRIC_NAMES = {"accuracy": "accuracy", "map": "mAP@0.5:0.95", "map50": "mAP@0.5"}


def record_serving_info(ctx: RunContext, task: Task, model_path: Path, tokenizer) -> None:
    """Store the preprocessing and class names of training in model.onnx (``model_card``),
    and a text model's tokenizer in ``tokenizer/`` beside it, so ``sparsifyctl serve --task``
    turns an image or a sentence into exactly the tensors the model was trained on."""
    from .. import model_card

    use_case = ctx.experiment.use_case
    if task.kind == "detection":
        return  # the serving card describes classifier logits; detectors are not served yet
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
    speedup = measured_speedup(baseline, optimized)
    settings = {
        **settings,
        "int8_method": result["int8_method"] or "none (FP32)",
        "int8_source": result["int8_source"],
        "fp32_accuracy": round(result["fp32_accuracy"], 5),
    }
    if macs:
        baseline.flops = baseline.flops or macs[0]
        optimized.flops = optimized.flops or macs[1]
    return Report.of(
        experiment=ctx.experiment.to_wire(),
        mode=mode,
        settings=settings,
        baseline=baseline,
        optimized=optimized,
        layers=(extra_layers or []) + list(result["layers"]),
        candidates=result["candidates"],
        training=history,
        speedup_source=explain_speedup(
            mode,
            speedup,
            int8=result["int8_method"],
            sparsity=sparsity,
            channels=ChannelCounts(*macs) if macs else None,
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
) -> list:
    ctx.telemetry.stage("train-dense")
    trainer = make_trainer(ctx, task, model, with_epochs(cfg, epochs), store, phase="dense", span=span)
    history = trainer.fit()
    for r in history:
        r.epoch = round(r.epoch - epochs, 3)  # dense epochs count as negative: before the main phase
    return history


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
) -> tuple[nn.Module, list]:
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
    return qat_model.cpu().eval(), history


def common_setup(ctx: RunContext):
    """Typed recipe, data, train config: all validated up front."""
    from ..data.hf_datasets import split_data_kwargs
    from ..recipes import load_recipe

    recipe = load_recipe(ctx.experiment, ctx.recipe_path)
    _, train_kwargs = split_data_kwargs(ctx.experiment.train_kwargs)  # data keys: see inspect_data
    raw_cfg = limit_samples(ctx.experiment, parse_train_kwargs(train_kwargs))
    splits, classes, train_count = inspect_data(ctx)
    return recipe, raw_cfg, splits, classes, train_count


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


def load_task_model(ctx: RunContext, path, arch: str | None, splits, classes: list[str], cfg: TrainConfig):
    """``models.load_model`` with the run's input size for detectors (train-kwargs
    ``image_size``, else the checkpoint's, the architecture's or the data's)."""
    from ..models import load_model

    kwargs = {}
    if ctx.experiment.use_case == "object-detection":
        from .detection_task import default_detection_size

        kwargs = {"image_size": cfg.image_size or None, "default_size": default_detection_size(splits, None)}
    return load_model(ctx.experiment.use_case, path, arch=arch, classes=classes, **kwargs)


def detector_size(loaded) -> int | None:
    """A detector's static input size (its teacher must run at it); None for other models."""
    return int(loaded.module.image_size) if loaded.kind == "detection" else None


def load_teacher(ctx: RunContext, splits, classes: list[str], cfg: TrainConfig, size: int | None = None):
    """The --teacher model (None without one); it must already have a head for these classes
    (and, for a detector, run at the student's input size ``size``)."""
    exp = ctx.experiment
    if ctx.teacher_path is None:
        return None
    if size is not None:
        cfg = with_epochs(cfg, cfg.epochs, image_size=size)
    teacher = load_task_model(ctx, ctx.teacher_path, exp.arch, splits, classes, cfg)
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


# ---- the shared tail of both training pathways --------------------------------------------
@dataclass
class Finished:
    """What ``finish_training`` hands back to the pathway for its report."""

    model: nn.Module
    """The model behind model.onnx (the QAT weights when their INT8 won)."""
    trained_model: nn.Module
    """The model after the main phase (before the QAT swap)."""
    result: dict[str, Any]
    history: list
    final_accuracy: float


def finish_training(
    ctx: RunContext,
    task: Task,
    *,
    model: nn.Module,
    baseline_model: nn.Module,
    recipe: TrainingRecipe,
    cfg: TrainConfig,
    store: CheckpointStore,
    int8: bool,
    qat_teacher: nn.Module | None,
    keep_zeros: bool,
    qat_epoch_offset: float,
    loaded: Any,
    structured: bool,
    history: list,
    notes: list[str],
    timings: dict[str, float],
    clock: float,
) -> Finished:
    """After the main phase, for both training pathways: QAT (when INT8 is built) -> rank 0
    only from here -> export, INT8 choice (PTQ vs QAT), evaluate, benchmark -> model.pt."""
    from .export import save_torch_artifact
    from .loop import evaluate

    history = list(history)
    qat_model = None
    if recipe.wants_qat(int8):
        qat_model, qat_history = run_qat_phase(
            ctx,
            task,
            model,
            cfg,
            store,
            recipe,
            teacher=qat_teacher,
            keep_zeros=keep_zeros,
            epoch_offset=qat_epoch_offset,
            span=(0.8, 0.9),
        )
        history += qat_history
    notes.extend(store.notes)
    finish_distributed()
    clock = elapsed(timings, "train", clock)

    cpu = torch.device("cpu")
    trained = model.cpu().eval()
    result = finalize(
        ctx,
        task,
        baseline_model=baseline_model,
        final_model=trained,
        recipe=recipe,
        int8=int8,
        cfg=cfg,
        qat_model=qat_model,
        tokenizer=loaded.tokenizer,
    )
    # model.onnx was built from the QAT weights when their INT8 won: model.pt holds them too
    shipped = qat_model if result["int8_source"] == "qat" else trained
    save_torch_artifact(task, shipped, loaded.arch, loaded.tokenizer, ctx.work_dir, structured=structured)
    final_accuracy = evaluate(task, shipped, cpu)
    elapsed(timings, "export_evaluate", clock)
    return Finished(
        model=shipped, trained_model=trained, result=result, history=history, final_accuracy=final_accuracy
    )
