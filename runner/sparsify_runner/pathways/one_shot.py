"""One-shot pathway: an ONNX model + .npz samples -> the fastest (or smallest) model.onnx within
the optim level's accuracy budget.

validate everything (recipe, policy, model, samples) before any work -> split the samples
(calibration / tuning / acceptance) -> baseline outputs -> the outcome search
(``outcome/search.py``: pruning and INT8 candidates measured against the baseline, one
chosen) -> write model.onnx -> evaluate on every held-out sample -> benchmark baseline vs
shipped (medians, alternating) -> Report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..context import RunContext
from ..errors import InputError
from ..quant_format import resolve_quant_format
from ..recipes.levels import OutcomePolicy
from ..report import LayerReport, Report
from ..speedup import explain_speedup
from ..summary import format_size

MODEL_FILE = "model.onnx"
MIN_ACCEPT_SAMPLES = 8


@dataclass
class _Plan:
    """What one-shot will do, decided (and validated) before any data is read."""

    recipe: Any
    policy: OutcomePolicy
    method: str
    quant_format: str


@dataclass
class _Samples:
    """Calibration, tuning (the search judges on these) and acceptance (the choice is confirmed
    on these, never searched on) samples, with labels where the data has them."""

    calibration: list
    tune: list
    tune_labels: list | None
    accept: list
    accept_labels: list | None
    holdout: list
    holdout_labels: list | None
    notes: list[str]
    settings: dict[str, Any]


def _plan(ctx: RunContext) -> _Plan:
    """The typed recipe and the level policy; bad input -> InputError."""
    from ..recipes import int8_wanted, load_recipe
    from ..recipes.levels import outcome_policy

    exp = ctx.experiment
    recipe = load_recipe(exp, ctx.recipe_path)
    method = recipe.pruning_method or exp.pruning_method
    if exp.structure == "channels" and method != "obs":
        raise InputError(
            "--structure channels selects channels with the calibration Hessian (structured OBS) and has "
            "no magnitude variant; use --pruning-method obs (the default) or --structure unstructured"
        )
    if ctx.model_path is None:
        raise InputError("one-shot needs an ONNX model; pass --model MODEL.onnx")
    level = float(exp.optim_level)
    policy = outcome_policy(
        level,
        objective=exp.objective,
        max_accuracy_drop=exp.max_accuracy_drop,
        int8=int8_wanted(recipe.quantize, level),
        structure=exp.structure,
        sparsity=recipe.sparsity,
        macs_reduction=recipe.macs_reduction,
    )
    return _Plan(recipe, policy, method, resolve_quant_format(exp.deploy, recipe.quant_format))


def _samples(ctx: RunContext, plan: _Plan, inputs, detector: bool) -> _Samples:
    from ..data.npz import load_npz_folder, split_samples

    exp = ctx.experiment
    data = load_npz_folder(ctx.data_path, inputs, show_progress=ctx.show_progress, detection=detector)
    if exp.eval_metric in ("mAP", "mAP50") and data.labels is None:
        raise InputError(
            f"eval metric '{exp.eval_metric}' needs ground-truth boxes: add 'boxes' (n, 4) x1 y1 x2 y2 "
            f"pixels and 'labels' (n,) to every .npz file in '{ctx.data_path}', or use --eval-metric fidelity"
        )
    if exp.eval_metric in ("accuracy", "f1", "recall") and data.labels is None:
        raise InputError(
            f"eval metric '{exp.eval_metric}' needs labels: add an integer 'label' key to every .npz file in "
            f"'{ctx.data_path}', or use --eval-metric fidelity"
        )
    recipe = plan.recipe
    split = split_samples(
        data,
        holdout_fraction=recipe.holdout_fraction,
        max_holdout=exp.val_samples or recipe.max_holdout_samples,
        calibration_samples=exp.train_samples or recipe.calibration_samples,
    )
    use_labels = split.holdout_labels is not None and exp.eval_metric != "fidelity"
    labels = split.holdout_labels if use_labels else None
    notes = list(split.notes)
    n = len(split.holdout)
    every = round(1 / recipe.acceptance_fraction) if recipe.acceptance_fraction > 0 else 0
    accept_idx = list(range(every - 1, n, every)) if every else []
    if len(accept_idx) < MIN_ACCEPT_SAMPLES or len(accept_idx) == n:
        accept_idx = []
        if plan.policy.searches and recipe.acceptance_fraction > 0:
            notes.append(
                f"{n} held-out sample(s) are too few to keep an acceptance split apart; the choice is "
                "accepted on the samples it was tuned on (optimistic)"
            )
    accepted = set(accept_idx)
    tune_idx = [i for i in range(n) if i not in accepted] or list(range(n))
    accept_idx = accept_idx or tune_idx

    def pick(items: list | None, idx: list[int]) -> list | None:
        return None if items is None else [items[i] for i in idx]

    return _Samples(
        calibration=split.calibration,
        tune=pick(split.holdout, tune_idx),
        tune_labels=pick(labels, tune_idx),
        accept=pick(split.holdout, accept_idx),
        accept_labels=pick(labels, accept_idx),
        holdout=split.holdout,
        holdout_labels=labels,
        notes=notes,
        settings={
            "calibration_samples": len(split.calibration),
            "holdout_samples": n,
            "tuning_samples": len(tune_idx),
            "acceptance_samples": len(accept_idx) if accepted else 0,
            "holdout_disjoint": split.disjoint,
            "labels": data.labels is not None,
        },
    )


def _policy_record(policy: OutcomePolicy, final, search_result) -> dict[str, Any]:
    from ..recipes.levels import level_table

    return {
        "optim_level": policy.level,
        "objective": policy.objective.value,
        "max_accuracy_drop": policy.max_accuracy_drop,
        "budget_source": policy.budget_source,
        "search_space": {
            "int8": policy.int8,
            "macs_reductions": list(policy.macs_reductions),
            "sparsities": list(policy.sparsities),
        },
        "description": policy.describe(),
        "result": None if final is None else final.to_dict(),
        "chosen": None
        if search_result is None or search_result.chosen is None
        else search_result.chosen.name,
        "level_table": level_table(),
    }


def _mode(chosen) -> str:
    if chosen is None:
        return "baseline"
    if chosen.prune is None:
        return "quantization-only"
    return chosen.prune.family


def _merge_layers(final: list[LayerReport], pruned: list[LayerReport] | None) -> list[LayerReport]:
    if not pruned:
        return final
    by_name = {ly.name: ly for ly in pruned}
    merged = []
    for ly in final:
        src = by_name.get(ly.name)
        merged.append(ly.model_copy(update={"note": src.note}) if src is not None and src.note else ly)
    return merged


def _export(ctx: RunContext, baseline: Path, shipped: Path) -> Path:
    """model.onnx in the staging folder (temporary name, then rename); the input's serving card
    (preprocessing, class names) carried over."""
    partial = ctx.work_dir / f".{MODEL_FILE}.partial"
    shutil.copyfile(shipped, partial)
    if shipped != baseline:
        from ..model_card import carry_over

        carry_over(baseline, partial)
    final = ctx.work_dir / MODEL_FILE
    os.replace(partial, final)
    return final


def _benchmark(ctx: RunContext, baseline: Path, final: Path, identical: bool, seconds: float):
    """Baseline and shipped model side by side (medians, alternating); an identical model is
    measured once and reported as the same numbers."""
    from ..benchmark import measure_latency

    exp = ctx.experiment
    paths = [baseline] if identical else [baseline, final]
    stats = measure_latency(
        paths,
        batch_size=exp.deploy.batch_size,
        device=exp.deploy.device,
        seconds=seconds,
        show_progress=ctx.show_progress,
    )
    return stats[0], stats[-1]


def run(ctx: RunContext) -> Report:
    from ..evaluate import fidelity_score
    from ..modelstats import layer_sparsity, model_stats
    from ..modifiers.one_shot import OneShotState, outputs_on
    from ..onnx_model import load_static_model
    from ..outcome.judge import Judge
    from ..outcome.search import SearchInputs, search

    exp = ctx.experiment
    tel = ctx.telemetry
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    # ---- validate everything before any work ------------------------------------------
    tel.stage("load")
    plan = _plan(ctx)
    policy = plan.policy
    detector = exp.is_detection
    model, inputs = load_static_model(ctx.model_path)
    samples = _samples(ctx, plan, inputs, detector)
    notes: list[str] = list(samples.notes)
    lap("load")
    tel.progress(0.05)

    baseline_path = Path(ctx.model_path)
    metric = exp.eval_metric
    found = None
    with tempfile.TemporaryDirectory(prefix="sparsify-oneshot-") as build_name:
        # ---- baseline --------------------------------------------------------------------
        tel.stage("baseline")
        state = OneShotState(
            baseline=baseline_path,
            current=baseline_path,
            build=Path(build_name),
            calibration=samples.calibration,
            holdout=samples.tune,
            baseline_outputs=[],
            model=model,
            show_progress=ctx.show_progress,
            telemetry=tel,
            detector=detector,
        )
        state.baseline_outputs = state.holdout_outputs(baseline_path, "baseline")
        if detector:
            check_detector_outputs(state.baseline_outputs)
        lap("baseline")
        tel.progress(0.1)

        # ---- the outcome search ----------------------------------------------------------
        shipped = baseline_path
        if policy.searches:
            tune = Judge(
                state.baseline_outputs,
                budget=policy.max_accuracy_drop,
                labels=samples.tune_labels,
                metric=metric,
                detector=detector,
            )
            accept = Judge(
                outputs_on(baseline_path, samples.accept, detector),
                budget=policy.max_accuracy_drop,
                labels=samples.accept_labels,
                metric=metric,
                detector=detector,
            )
            found = search(
                SearchInputs(
                    state=state,
                    policy=policy,
                    tune=tune,
                    accept=accept,
                    accept_samples=samples.accept,
                    recipe=plan.recipe,
                    method=plan.method,
                    quant_format=plan.quant_format,
                    deploy_batch=exp.deploy.batch_size,
                    deploy_device=exp.deploy.device,
                )
            )
            notes.extend(found.notes)
            timings.update(found.timings_s)
            if found.chosen is not None:
                shipped = found.chosen.path
        state.model = model = None
        clock = time.perf_counter()
        tel.progress(0.8)

        # ---- write model.onnx, evaluate on every held-out sample, benchmark ----------------
        tel.stage("export")
        final_path = _export(ctx, baseline_path, shipped)
        identical = shipped == baseline_path
        tel.stage("evaluate")
        base_out = outputs_on(baseline_path, samples.holdout, detector)
        opt_out = base_out if identical else outputs_on(shipped, samples.holdout, detector)
        final = Judge(
            base_out,
            budget=policy.max_accuracy_drop,
            labels=samples.holdout_labels,
            metric=metric,
            detector=detector,
        ).assess(opt_out)
        fid = _fidelity(base_out, opt_out, detector)
        tel.evaluation("fidelity", fidelity_score(fid))
        lap("evaluate")
        tel.progress(0.85)
        tel.stage("benchmark")
        base_lat, opt_lat = _benchmark(
            ctx, baseline_path, final_path, identical, plan.recipe.benchmark_seconds
        )
        lap("benchmark")
        contention = None if identical else base_lat.contention_note()
        if contention:
            notes.append(contention)
        tel.progress(0.95)

    chosen = found.chosen if found is not None else None
    baseline = model_stats(baseline_path).model_copy(update={"latency": base_lat})
    optimized = model_stats(final_path).model_copy(update={"latency": opt_lat})
    _set_metrics(exp, baseline, optimized, base_out, opt_out, samples.holdout_labels, detector, tel)
    mode = _mode(chosen)
    report = Report.of(
        experiment=exp.to_wire(),
        mode=mode,
        settings=_settings(exp, plan, samples, chosen),
        baseline=baseline,
        optimized=optimized,
        identical=identical,
        fidelity=fid,
        layers=_merge_layers(
            layer_sparsity(final_path), chosen.prune.layers if chosen is not None and chosen.prune else None
        ),
        candidates=found.records if found is not None else [],
        policy=_policy_record(policy, final, found),
        notes=notes,
        timings_s=timings,
    )
    report.speedup_source = _speedup_source(report, chosen, policy)
    if mode == "unstructured":
        report.notes.append(
            f"file size {format_size(baseline.file_size_bytes)} -> {format_size(optimized.file_size_bytes)}, "
            f"gzip {format_size(baseline.compressed_size_bytes)} -> "
            f"{format_size(optimized.compressed_size_bytes)}: zeros from unstructured sparsity are "
            "stored densely, so only the compressed size shrinks from them"
        )
    tel.progress(1.0)
    return report


def _fidelity(base_out, opt_out, detector: bool):
    from ..evaluate import fidelity

    if detector:
        from ..detection.fidelity import detection_fidelity

        return detection_fidelity(base_out, opt_out)
    return fidelity(base_out, opt_out)


def _set_metrics(exp, baseline, optimized, base_out, opt_out, labels, detector: bool, tel) -> None:
    """Accuracy (and macro F1 / recall, or a detector's mAP) of both models on every held-out
    sample, when the data has labels."""
    if labels is None:
        return
    if detector:
        set_detection_metrics(baseline, optimized, base_out, opt_out, labels)
        tel.evaluation("map", optimized.map)
        return
    from ..evaluate import accuracy, macro_f1, macro_recall

    baseline.accuracy = round(accuracy(base_out, labels), 5)
    optimized.accuracy = round(accuracy(opt_out, labels), 5)
    tel.evaluation("baseline_accuracy", baseline.accuracy)
    tel.evaluation("accuracy", optimized.accuracy)
    if exp.eval_metric in ("f1", "recall"):
        for stats, outs in ((baseline, base_out), (optimized, opt_out)):
            stats.f1 = round(macro_f1(outs, labels), 5)
            stats.recall = round(macro_recall(outs, labels), 5)
        tel.evaluation(exp.eval_metric, getattr(optimized, exp.eval_metric))


def _settings(exp, plan: _Plan, samples: _Samples, chosen) -> dict[str, Any]:
    """The effective settings: what the level asked for and what the chosen candidate is."""
    int8 = chosen.int8 if chosen is not None else None
    prune = chosen.prune if chosen is not None else None
    settings: dict[str, Any] = {
        "optim_level": float(exp.optim_level),
        "objective": plan.policy.objective.value,
        "max_accuracy_drop": plan.policy.max_accuracy_drop,
        "structure": exp.structure,
        "pruning_method": plan.method if prune is not None else None,
        "achieved_sparsity": None if prune is None else prune.achieved_sparsity,
        "achieved_macs_fraction": None if prune is None else prune.achieved_macs_fraction,
        "channels": None if prune is None or prune.channels is None else asdict(prune.channels),
        "quantize": int8 is not None,
        "quant_format": plan.quant_format if int8 is not None else None,
        "int8": None
        if int8 is None
        else {"chosen": int8.chosen, "fp32_nodes": int8.fp32_nodes, **int8.settings},
        **samples.settings,
        "recipe": plan.recipe.settings(),
    }
    return {k: v for k, v in settings.items() if v is not None}


def _speedup_source(report: Report, chosen, policy: OutcomePolicy) -> str:
    mode = report.mode
    if chosen is None:
        if policy.level == 0:
            return "optim level 0: the baseline model is returned unchanged, so there is no speedup"
        return (
            "the baseline model is returned unchanged: no candidate was both within the accuracy budget "
            "and faster on the deployment target"
        )
    int8 = chosen.int8
    return explain_speedup(
        mode,
        report.speedup,
        int8=f"{int8.chosen}, onnxruntime integer kernels" if int8 is not None else None,
        sparsity=report.optimized.sparsity if mode == "unstructured" else 0.0,
        channels=None if chosen.prune is None else chosen.prune.channels,
    )


def check_detector_outputs(outputs: dict) -> None:
    """A detector's outputs must be a format the post-processing reads (one clear line if not)."""
    from ..detection.postprocess import parse_outputs

    parse_outputs(outputs)


def set_detection_metrics(baseline, optimized, base_out: dict, opt_out: dict, targets: list) -> None:
    """mAP of both models against the held-out samples' boxes (class names are the indices)."""
    from ..detection.metrics import mean_average_precision
    from ..detection.postprocess import parse_outputs, postprocess
    from ..report import set_metrics

    classes = [str(i) for i in range(parse_outputs(base_out)[0][1].shape[1])]
    for stats, outputs in ((baseline, base_out), (optimized, opt_out)):
        set_metrics(stats, mean_average_precision(postprocess(outputs), targets, classes))
