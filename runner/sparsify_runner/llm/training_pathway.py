"""training-aware and sparse-transfer for ``--use-case text-generation``.

load and check (``training_setup``) -> the input model's held-out perplexity -> the main phase
through the training pathways' own loop and modifiers (training-aware: gradual magnitude pruning
of every Linear but the output head, distillation from the input model; sparse-transfer: the
input model's zeros held fixed, distillation from --teacher) -> the fine-tuned model saved as a
safetensors folder -> the one-shot quantization choice on it (``training_quantize``) -> the
shipped folder as ``model/``, reloaded with transformers and scored again -> ``LlmReport``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..context import RunContext
from ..modifiers.base import Modifier
from ..modifiers.training.distillation import DistillationModifier
from ..modifiers.training.masks import FixedMasks, MaskSet
from ..recipes import int8_wanted, macs_reduction_for_level, sparsity_for_level, training_mode
from ..report import EpochRecord
from ..spec import ExperimentType
from ..training.checkpoint import CheckpointStore, fingerprint
from ..training.distributed import finish_distributed, init_distributed
from ..training.loading import copy_model
from ..training.loop import distributed
from ..training.phases import run_main_phase, with_epochs
from . import perplexity
from .compress import weight_sparsity
from .levels import llm_policy
from .model_loading import load_model
from .pathway import MODEL_DIR, NO_SPEED, not_built, reload_note
from .report import LlmCandidate, LlmReport, PerplexityReport, folder_stats
from .schemes import SCHEMES, choose_group_size, quantized_in_features
from .structured import LlmChannelPruner
from .training_quantize import QuantizationChoice, candidate_builder, choose_quantization, training_candidates
from .training_setup import LlmTrainingSetup, load_llm_setup

OUTPUT_HEAD = "lm_head"


@dataclass
class LlmPlan:
    """What one pathway decided for this run."""

    mode: str
    main_epochs: int
    modifiers: list[Modifier]
    quantize: bool
    masks: MaskSet | None
    """The masks the main phase holds or grows (None: no pruning, no mask)."""
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def run_training_aware(ctx: RunContext) -> LlmReport:
    return _run(ctx, ExperimentType.training_aware)


def run_sparse_transfer(ctx: RunContext) -> LlmReport:
    from ..pathways.sparse_transfer import choose_base_model

    return _run(ctx, ExperimentType.sparse_transfer, choose_base_model)


def _run(ctx: RunContext, pathway: ExperimentType, choose_model=None) -> LlmReport:
    exp = ctx.experiment
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsify-llm-train-") as scratch_name:
        scratch = Path(scratch_name)
        ctx.telemetry.stage("load")
        torch.manual_seed(exp.seed)
        setup = (
            load_llm_setup(ctx, pathway, scratch, choose_model)
            if choose_model
            else load_llm_setup(ctx, pathway, scratch)
        )
        parameters = sum(p.numel() for p in setup.student.parameters())
        plan = _plan(ctx, pathway, setup)
        timings["load"] = _lap(clock)
        clock = time.perf_counter()
        ctx.telemetry.stage("evaluate")
        base_ppl = perplexity.measure(setup.student, setup.windows.held_out)
        ctx.telemetry.evaluation("baseline_perplexity", base_ppl.value)
        timings["baseline_perplexity"] = _lap(clock)

        clock = time.perf_counter()
        model, history, train_notes = _train(ctx, pathway, setup, plan)
        timings["train"] = _lap(clock)
        clock = time.perf_counter()
        tuned_ppl = perplexity.measure(model, setup.windows.held_out)
        sparsity = weight_sparsity(model)
        tuned_parameters = sum(p.numel() for p in model.parameters())
        plan.settings.update(_structure_settings(plan))
        tuned_folder = scratch / "fine-tuned"
        model.save_pretrained(tuned_folder)
        setup.tokenizer.save_pretrained(tuned_folder)
        del model
        timings["save_fine_tuned"] = _lap(clock)

        clock = time.perf_counter()
        quant = _quantize(ctx, setup, plan, base_ppl, tuned_ppl, tuned_folder, scratch, sparsity > 0)
        timings["quantization_search"] = _lap(clock)
        clock = time.perf_counter()
        ctx.telemetry.stage("save")
        target = ctx.work_dir / MODEL_DIR
        chosen = quant.result.chosen if quant else None
        shutil.move(str(chosen.outcome.folder if chosen else tuned_folder), target)
        reloaded = perplexity.measure(load_model(target), setup.windows.held_out)
        timings["reload_perplexity"] = _lap(clock)
        baseline_stats = folder_stats(setup.baseline.folder, parameters)
        candidates = _candidates(quant, target, tuned_parameters) if quant else []
    shipped_ppl = chosen.outcome.perplexity if chosen else tuned_ppl
    shipped_sparsity = chosen.outcome.sparsity if chosen else sparsity
    ctx.telemetry.evaluation("optimized_perplexity", shipped_ppl.value)
    increase = perplexity.relative_increase(base_ppl, shipped_ppl)
    budget = _policy(ctx).max_perplexity_increase
    ppl_report = PerplexityReport(
        windows=base_ppl.windows,
        sequence_length=setup.windows.sequence_length,
        tokens_scored=base_ppl.tokens,
        baseline=round(base_ppl.value, 4),
        baseline_interval=[round(base_ppl.low, 4), round(base_ppl.high, 4)],
        optimized=round(shipped_ppl.value, 4),
        optimized_interval=[round(shipped_ppl.low, 4), round(shipped_ppl.high, 4)],
        increase=round(increase.value, 6),
        increase_interval=[round(increase.low, 6), round(increase.high, 6)],
        budget=budget,
        reloaded=round(reloaded.value, 4),
    )
    fine_tuned = perplexity.relative_increase(base_ppl, tuned_ppl)
    settings = {
        **plan.settings,
        "perplexity_before_training": round(base_ppl.value, 4),
        "perplexity_after_training": round(tuned_ppl.value, 4),
        "perplexity_after_training_increase": round(fine_tuned.value, 6),
        "pruned_weight_sparsity": round(sparsity, 6),
        "mask_sparsity": round(plan.masks.sparsity(), 6) if plan.masks else 0.0,
        "quantized": chosen.scheme.value if chosen else None,
        "output_format": "compressed-tensors (save_compressed=True)"
        if chosen
        else "safetensors (save_pretrained)",
    }
    return LlmReport.of(
        baseline=baseline_stats,
        optimized=folder_stats(target, tuned_parameters, shipped_sparsity),
        experiment=exp.to_wire(),
        mode=plan.mode,
        settings=settings,
        policy=_policy_report(ctx, quant),
        candidates=candidates,
        training=history,
        perplexity=ppl_report,
        data=setup.windows.describe(),
        speedup_source=NO_SPEED,
        notes=[
            *setup.baseline.notes,
            *plan.notes,
            *train_notes,
            *_notes(ppl_report, tuned_ppl, shipped_ppl, reloaded),
        ],
        timings_s=timings,
    )


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _policy(ctx: RunContext):
    exp = ctx.experiment
    return llm_policy(
        exp.optim_level, objective=exp.objective, device=exp.deploy.device, max_increase=exp.max_accuracy_drop
    )


def _plan(ctx: RunContext, pathway: ExperimentType, setup: LlmTrainingSetup) -> LlmPlan:
    """Mode, modifiers and epochs: the training pathways' rules for a causal LM."""
    exp, recipe, cfg, model = ctx.experiment, setup.recipe, setup.cfg, setup.student
    level = exp.optim_level
    quantize = int8_wanted(recipe.quantize, level)
    base = {
        **recipe.settings(),
        "train": asdict(cfg),
        "model_source": setup.baseline.source,
        "architecture": setup.baseline.architecture,
        **setup.task.settings,
        **setup.choice.settings,
    }
    teacher = setup.teacher
    notes: list[str] = []
    if pathway is ExperimentType.sparse_transfer:
        masks = MaskSet.from_zeros(model, min_params=recipe.min_params, exclude=(OUTPUT_HEAD,))
        sparsity = masks.sparsity()
        if sparsity == 0:
            notes.append(
                "the input model has no zero weights in its Linear layers: this run is a plain fine-tune"
            )
        mode = "unstructured" if sparsity > 0 else ("quantization-only" if quantize else "baseline")
        modifiers: list[Modifier] = [FixedMasks(masks)]
        if teacher is not None:
            notes.append(f"distillation teacher: {exp.teacher} (--teacher)")
        settings = {**base, "mode": mode, "base_sparsity": round(sparsity, 6)}
        return LlmPlan(
            mode, cfg.epochs, [*modifiers, *_distill(recipe, teacher)], quantize, masks, settings, notes
        )

    from ..pathways.training_aware import main_phase_modifiers

    mode = training_mode(level, exp.structure)
    sparsity = recipe.sparsity if recipe.sparsity is not None else sparsity_for_level(pathway, level)
    main_epochs = cfg.epochs if level > 0 else 0
    if teacher is None and main_epochs:
        teacher = copy_model(model)
    notes.append(
        f"distillation teacher: {exp.teacher} (--teacher)"
        if setup.teacher is not None
        else "distillation teacher: the input model (dense)"
    )
    reduction = (
        recipe.macs_reduction
        if recipe.macs_reduction is not None
        else macs_reduction_for_level(pathway, level)
    )
    if mode == "channels":
        modifiers = [
            _channel_pruner(recipe, model, setup, main_epochs, reduction),
            *_distill(recipe, teacher),
        ]
    else:
        modifiers = (
            main_phase_modifiers(recipe, mode, model, setup.task, cfg, main_epochs, sparsity, 0.0, teacher)
            if main_epochs
            else []
        )
    masks = next((m.masks for m in modifiers if hasattr(m, "masks")), None)
    settings = {
        **base,
        "mode": mode,
        "target_sparsity": sparsity if mode == "unstructured" else 0.0,
        "target_macs_reduction": reduction if mode == "channels" else 0.0,
    }
    if level == 0:
        notes.append("optim level 0: the input model ships unchanged (no training, no quantization)")
    return LlmPlan(mode, main_epochs, modifiers, quantize, masks, settings, notes)


def _channel_pruner(
    recipe: Any, model: nn.Module, setup: LlmTrainingSetup, epochs: int, reduction: float
) -> LlmChannelPruner:
    """Head groups and MLP channels on the recipe's structured schedule (``training_aware``'s)."""
    from ..pathways.training_aware import _schedule
    from ..recipes.schema import StructuredPruningConfig

    config = recipe.config(StructuredPruningConfig)
    start, end = _schedule(config, setup.cfg.steps_per_epoch(len(setup.task.train)) * epochs)
    return LlmChannelPruner(
        model,
        macs_reduction=reduction,
        start_step=start,
        end_step=end,
        events=config.structured_events,
        round_to=config.round_channels_to,
    )


def _structure_settings(plan: LlmPlan) -> dict[str, Any]:
    """What channel pruning left: the layer widths and the share of the layers' MACs kept."""
    pruner = next((m for m in plan.modifiers if isinstance(m, LlmChannelPruner)), None)
    if pruner is None:
        return {}
    return {
        "widths_before": vars(pruner.base),
        "widths_after": vars(pruner.widths),
        "layer_macs_kept": round(pruner.macs_kept, 6),
    }


def _distill(recipe: Any, teacher: nn.Module | None) -> list[Modifier]:
    if teacher is None or recipe.distillation_weight <= 0:
        return []
    return [
        DistillationModifier(
            teacher, weight=recipe.distillation_weight, temperature=recipe.distillation_temperature
        )
    ]


def _train(
    ctx: RunContext, pathway: ExperimentType, setup: LlmTrainingSetup, plan: LlmPlan
) -> tuple[nn.Module, list[EpochRecord], list[str]]:
    """The main phase through the training pathways' loop (checkpoints, resume, SIGTERM)."""
    model = setup.student
    if not plan.main_epochs:
        return model.eval(), [], []
    spec = ctx.experiment.to_wire()
    for volatile in ("output", "name"):
        spec.pop(volatile, None)
    key = fingerprint(
        {"pathway": pathway.value, "spec": spec, "settings": plan.settings, "train": asdict(setup.cfg)}
    )
    rank, _ = distributed()
    store = CheckpointStore(ctx.checkpoint_dir, key, ctx.save_checkpoints, enabled=rank == 0)
    ctx.telemetry.stage(
        "train-prune" if plan.mode == "unstructured" and pathway is ExperimentType.training_aware else "train"
    )
    init_distributed()  # under torchrun all ranks train (DDP), then only rank 0 goes on
    result = run_main_phase(
        ctx, setup.task, model, with_epochs(setup.cfg, plan.main_epochs), store, plan.modifiers, (0.0, 0.8)
    )
    finish_distributed()
    return result.model.cpu().eval(), result.history, [*result.notes, *store.notes]


def _quantize(
    ctx: RunContext,
    setup: LlmTrainingSetup,
    plan: LlmPlan,
    base_ppl: perplexity.Perplexity,
    tuned_ppl: perplexity.Perplexity,
    folder: Path,
    scratch: Path,
    keep_zeros: bool,
) -> QuantizationChoice | None:
    policy = training_candidates(_policy(ctx))
    if not plan.quantize or not policy.schemes:
        return None
    group = (
        choose_group_size(quantized_in_features(setup.student))
        if any(SCHEMES[s].grouped for s in policy.schemes)
        else None
    )
    calibration = setup.windows.calibration[: setup.cfg.calibration_samples]
    build = candidate_builder(
        folder=folder,
        tokenizer=setup.tokenizer,
        group_size=group.size if group else 0,
        calibration=calibration,
        held_out=setup.windows.held_out,
        out_root=scratch / "candidates",
        on_start=lambda scheme: ctx.telemetry.stage(f"candidate {scheme.value}"),
    )
    choice = choose_quantization(
        policy,
        baseline=base_ppl,
        fine_tuned=tuned_ppl,
        spent_budget_drop=setup.recipe.max_int8_accuracy_drop,
        keep_zeros=keep_zeros,
        build=build,
        group_size=group.size if group else 0,
    )
    if group and group.note:
        choice.reason += f"; {group.note}"
    return choice


def _policy_report(ctx: RunContext, quant: QuantizationChoice | None) -> dict[str, Any]:
    policy = training_candidates(_policy(ctx))
    chosen = quant.result.chosen if quant else None
    return {
        **policy.to_dict(),
        "search_space": policy.to_dict()["search_space"] if quant else [],
        "chosen": chosen.scheme.value if chosen else None,
        "reason": quant.reason
        if quant
        else "no quantization at this level/recipe: the fine-tuned model ships",
        "quantization_budget": quant.budget if quant else None,
    }


def _candidates(quant: QuantizationChoice, shipped: Path, parameters: int) -> list[LlmCandidate]:
    records = []
    chosen = quant.result.chosen
    for judged in quant.result.judged:
        outcome, info = judged.outcome, SCHEMES[judged.scheme]
        stats = folder_stats(shipped if judged is chosen else outcome.folder, parameters)
        records.append(
            LlmCandidate(
                name=judged.scheme.value,
                scheme=info.how,
                chosen=judged is chosen,
                stage="quantization",
                perplexity=round(outcome.perplexity.value, 4),
                perplexity_interval=[round(outcome.perplexity.low, 4), round(outcome.perplexity.high, 4)],
                accuracy_drop=round(judged.increase.value, 6),
                accuracy_drop_interval=[round(judged.increase.low, 6), round(judged.increase.high, 6)],
                within_budget=judged.within_budget,
                size_bytes=stats.file_size_bytes,
                compressed_size_bytes=stats.compressed_size_bytes,
                sparsity=round(outcome.sparsity, 6),
                compress_seconds=round(outcome.compress_seconds, 3),
                note="accuracy_drop is the relative perplexity increase over policy.reason's reference",
            )
        )
    return records + not_built(quant.result.skipped)


def _notes(
    ppl: PerplexityReport, tuned: perplexity.Perplexity, shipped: perplexity.Perplexity, reloaded
) -> list[str]:
    notes = [
        f"held-out perplexity ({ppl.windows} windows of {ppl.sequence_length} tokens): input model "
        f"{ppl.baseline:.3f}, after training {tuned.value:.3f}, shipped {ppl.optimized:.3f} "
        f"({ppl.increase:+.2%}, 90% {ppl.increase_interval[0]:+.2%} to {ppl.increase_interval[1]:+.2%}; "
        f"level budget +{ppl.budget:.1%})"
    ]
    notes.append(reload_note(reloaded, shipped))
    return notes
