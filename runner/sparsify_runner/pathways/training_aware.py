"""Training-aware: gradual pruning (unstructured GMP or structured channels/heads) while
fine-tuning a dense PyTorch model, distillation from the dense model (or --teacher), INT8,
ONNX export, report."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from ..context import RunContext
from ..models import load_model
from ..modifiers.distillation import DistillationModifier
from ..modifiers.gmp import GMPModifier
from ..modifiers.masks import MaskSet, classifier_name, prunable_weights
from ..modifiers.structured import StructuredPruner, count_macs, macs_reduction_for_level
from ..recipes import sparsity_for_level
from ..report import Report
from ..spec import ExperimentType
from ..training import pipeline as P
from ..training.export import save_torch_artifact
from ..training.loop import Trainer, evaluate


def run(ctx: RunContext) -> Report:
    exp = ctx.experiment
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ctx.telemetry.stage("load")
    torch.manual_seed(exp.seed)
    settings, raw_cfg, splits, classes, train_count = P.common_setup(ctx, "training_aware.yaml")
    loaded = load_model(exp.use_case, ctx.model_path, arch=exp.arch, classes=classes)
    teacher = P.load_teacher(ctx, classes)
    cfg = raw_cfg.resolved(kind=loaded.kind, train_count=train_count)
    task = P.build_task(ctx, splits, cfg, loaded.tokenizer)
    level = exp.optim_level
    structured = exp.structure == "channels" and level >= 0.3
    mode = (
        "baseline"
        if level == 0
        else ("quantization-only" if level < 0.3 else ("channels" if structured else "unstructured"))
    )
    dense_epochs = (
        cfg.dense_epochs
        if cfg.dense_epochs >= 0
        else (max(1, cfg.epochs // 2) if loaded.head_replaced else 0)
    )
    sparsity = (
        float(settings["sparsity"])
        if settings.get("sparsity") is not None
        else sparsity_for_level(ExperimentType.training_aware, level)
    )
    reduction = (
        float(settings["macs_reduction"])
        if settings.get("macs_reduction") is not None
        else macs_reduction_for_level(level)
    )
    effective = {
        **settings,
        "mode": mode,
        "arch": loaded.arch,
        "classes": len(classes),
        "target_sparsity": sparsity if mode == "unstructured" else 0.0,
        "target_macs_reduction": reduction if structured else 0.0,
        "dense_epochs": dense_epochs,
        "train": asdict(cfg),
        **task.settings,
    }
    store = P.make_store(ctx, "training-aware", effective, cfg, {})
    notes = list(loaded.notes)
    P.init_distributed()
    t = P.elapsed(timings, "load", t)

    model = loaded.module
    history = []
    main_epochs = cfg.epochs if (level >= 0.3 or dense_epochs == 0) and level > 0 else 0
    total = dense_epochs + main_epochs or 1
    if dense_epochs:
        history += P.run_dense_phase(
            ctx, task, model, cfg, store, dense_epochs, (0.0, 0.8 * dense_epochs / total)
        )
        notes.append(
            f"baseline = the model after {dense_epochs} epoch(s) of dense fine-tuning "
            "(its checkpoint had no head for these classes)"
            + ("" if teacher else "; it is also the distillation teacher")
        )
    baseline_model = P.copy_model(model)
    t = P.elapsed(timings, "train_dense", t)

    modifiers: list = []
    macs = None
    if main_epochs:
        steps = cfg.steps_per_epoch(len(task.train)) * main_epochs
        start = int(float(settings["prune_start_fraction"]) * steps)
        end = max(start + 1, int(float(settings["prune_end_fraction"]) * steps))
        head = classifier_name(model)
        if mode == "unstructured":
            exclude = (head,)
            if not settings.get("prune_first_conv", False):
                first = next((n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)), None)
                exclude += (first,) if first else ()
            if not settings.get("prune_depthwise", False):
                exclude += tuple(depthwise_convs(model))
            names = list(prunable_weights(model, min_params=int(settings["min_params"]), exclude=exclude))
            every = max(
                1, round(float(settings["update_every_epochs"]) * cfg.steps_per_epoch(len(task.train)))
            )
            modifiers.append(
                GMPModifier(
                    MaskSet(model, names),
                    init_sparsity=float(settings["init_sparsity"]),
                    final_sparsity=sparsity,
                    start_step=start,
                    end_step=end,
                    update_every=every,
                )
            )
        elif mode == "channels":
            example = task.example_inputs(1)
            modifiers.append(
                StructuredPruner(
                    model,
                    example,
                    kind=task.kind,
                    macs_reduction=reduction,
                    start_step=start,
                    end_step=end,
                    events=int(settings["structured_events"]),
                    round_to=int(settings["round_channels_to"]) if task.kind == "image" else None,
                    ignored=[head],
                )
            )
        weight = float(settings["distillation_weight"])
        teacher_model = teacher.module if teacher else baseline_model
        if teacher and weight > 0:
            notes.append(f"distillation teacher: {exp.teacher} (--teacher)")
        if weight > 0:
            modifiers.append(
                DistillationModifier(
                    teacher_model, weight=weight, temperature=float(settings["distillation_temperature"])
                )
            )
        ctx.telemetry.stage("train-prune" if level >= 0.3 else "train")
        phase_cfg = P.TrainConfig(**{**asdict(cfg), "epochs": main_epochs})
        trainer = Trainer(
            task,
            model,
            phase_cfg,
            "main",
            store,
            modifiers,
            ctx.telemetry,
            ctx.show_progress,
            exp.seed,
            (0.8 * dense_epochs / total, 0.8),
        )
        history += trainer.fit()
        model = trainer.bare_model
        if trainer.resumed_from is not None:
            notes.append(f"resumed from a checkpoint at step {trainer.resumed_from} of {trainer.total_steps}")
    int8 = P.want_int8(settings, level)
    qat_model = None
    if P.want_qat(settings, int8):
        qat_model, qat_history = P.run_qat_phase(
            ctx,
            task,
            model,
            cfg,
            store,
            effective,
            teacher=teacher.module if teacher else baseline_model,
            keep_zeros=mode == "unstructured",
            epoch_offset=float(main_epochs),
            span=(0.8, 0.9),
        )
        history += qat_history
    for note in store.notes:
        notes.append(note)
    P.finish_distributed()
    t = P.elapsed(timings, "train", t)

    model.cpu().eval()
    if mode == "channels":
        example = task.example_inputs(1)
        macs = (count_macs(baseline_model, example), count_macs(model, example))
    final_acc = evaluate_torch(task, model)
    result = P.finalize(
        ctx,
        task,
        baseline_model=baseline_model,
        final_model=model,
        settings=effective,
        mode=mode,
        int8=int8,
        cfg=cfg,
        qat_model=qat_model,
        tokenizer=loaded.tokenizer,
    )
    if result["int8_source"] == "qat":
        model = qat_model  # model.onnx was built from the QAT weights: model.pt holds them too
        final_acc = evaluate_torch(task, model)
    save_torch_artifact(
        task, model, loaded.arch, loaded.tokenizer, ctx.work_dir, structured=mode == "channels"
    )
    effective.update(P.torch_param_stats(model), torch_val_accuracy=round(final_acc, 5))
    report = P.build_report(
        ctx,
        mode=mode,
        settings=effective,
        result=result,
        history=history,
        notes=notes,
        extra_layers=P.channel_layers(baseline_model, model) if mode == "channels" else None,
        macs=macs,
        sparsity=P.prunable_sparsity(model),
    )
    P.elapsed(timings, "export_evaluate", t)
    report.timings_s.update(timings)
    return report


def depthwise_convs(model: torch.nn.Module) -> list[str]:
    """Depthwise convs hold ~9 weights per channel: at high sparsity a layer-wise mask zeroes
    whole channels (measured: MobileNetV2 at 95% fell to chance), for ~1% of the weights."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]


def evaluate_torch(task, model) -> float:
    return evaluate(task, model, torch.device("cpu"))
