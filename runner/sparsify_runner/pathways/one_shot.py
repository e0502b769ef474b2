"""One-shot pathway: an ONNX model + .npz calibration samples -> pruned and/or INT8 model.onnx.

validate everything (recipe, model, samples) before any work -> baseline outputs on the
held-out samples -> the recipe's modifiers (``modifiers.one_shot.plan``: pruning at optim
level >= 0.3, INT8 chosen by measurement at level > 0) -> evaluate on held-out samples ->
benchmark baseline vs optimized -> Report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..context import RunContext
from ..errors import InputError
from ..report import LayerReport, Report, measured_speedup
from ..spec import ExperimentType
from ..speedup import ChannelCounts, explain_speedup

MODEL_FILE = "model.onnx"


def _merge_layers(final: list[LayerReport], pruned: list[LayerReport] | None) -> list[LayerReport]:
    if not pruned:
        return final
    by_name = {ly.name: ly for ly in pruned}
    merged = []
    for ly in final:
        src = by_name.get(ly.name)
        merged.append(ly.model_copy(update={"note": src.note}) if src is not None and src.note else ly)
    return merged


@dataclass
class _Plan:
    """What one-shot will do, decided (and validated) before any data is read."""

    recipe: Any
    channels: bool
    method: str
    target: float
    """MAC reduction (channels) or weight sparsity (unstructured); 0 = no pruning."""
    int8: bool
    quant_format: str
    modifiers: list


def _plan(ctx: RunContext) -> _Plan:
    """The typed recipe and the level policy -> the modifiers to run; bad input -> InputError."""
    from ..modifiers.one_shot import plan
    from ..recipes import int8_wanted, load_recipe, macs_reduction_for_level, sparsity_for_level

    exp = ctx.experiment
    recipe = load_recipe(exp, ctx.recipe_path)
    channels = exp.structure == "channels"
    method = recipe.pruning_method or exp.pruning_method
    if channels and method != "obs":
        raise InputError(
            "--structure channels selects channels with the calibration Hessian (structured OBS) and has "
            "no magnitude variant; use --pruning-method obs (the default) or --structure unstructured"
        )
    if ctx.model_path is None:
        raise InputError("one-shot needs an ONNX model; pass --model MODEL.onnx")
    level = float(exp.optim_level)
    if channels:  # channels: the optim level sets a MAC reduction instead of a weight sparsity
        mr = recipe.macs_reduction
        target = mr if mr is not None else macs_reduction_for_level(ExperimentType.one_shot, level)
    else:
        sp = recipe.sparsity
        target = sp if sp is not None else sparsity_for_level(ExperimentType.one_shot, level)
    int8 = int8_wanted(recipe.quantize, level)
    fmt = recipe.quant_format or exp.deploy.quant_format
    fmt = "qdq" if fmt == "auto" else fmt
    modifiers = plan(recipe, target=target, channels=channels, method=method, int8=int8, quant_format=fmt)
    return _Plan(recipe, channels, method, target, int8, fmt, modifiers)


def run(ctx: RunContext) -> Report:
    from ..benchmark import measure_latency
    from ..data.npz import load_npz_folder, split_samples
    from ..evaluate import accuracy, fidelity_score
    from ..modelstats import layer_sparsity, model_stats
    from ..modifiers.base import ModifierResult
    from ..modifiers.one_shot import OneShotState
    from ..onnx_model import load_static_model

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
    p = _plan(ctx)
    recipe, channels, target, int8, modifiers = p.recipe, p.channels, p.target, p.int8, p.modifiers

    detector = exp.use_case == "object-detection"
    model, inputs = load_static_model(ctx.model_path)
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
    split = split_samples(
        data,
        holdout_fraction=recipe.holdout_fraction,
        max_holdout=exp.val_samples or recipe.max_holdout_samples,
        calibration_samples=exp.train_samples or recipe.calibration_samples,
    )
    use_labels = split.holdout_labels is not None and exp.eval_metric != "fidelity"
    notes: list[str] = list(split.notes)
    lap("load")
    tel.progress(0.05)

    baseline_path = Path(ctx.model_path)
    if not modifiers:
        mode = "baseline"
    else:
        mode = ("channels" if channels else "unstructured") if target > 0 else "quantization-only"
    effective: dict[str, Any] = {
        "optim_level": float(exp.optim_level),
        "structure": exp.structure,
        ("target_macs_reduction" if channels else "target_sparsity"): target,
        "pruning_method": p.method if target > 0 else None,
        "quantize": int8,
        "quant_format": p.quant_format if int8 else None,
        "calibration_samples": len(split.calibration),
        "holdout_samples": len(split.holdout),
        "holdout_disjoint": split.disjoint,
        "labels": data.labels is not None,
        "recipe": recipe.settings(),
    }

    with tempfile.TemporaryDirectory(prefix="sparsify-oneshot-") as build_name:
        # ---- baseline --------------------------------------------------------------------
        tel.stage("baseline")
        state = OneShotState(
            baseline=baseline_path,
            current=baseline_path,
            build=Path(build_name),
            calibration=split.calibration,
            holdout=split.holdout,
            baseline_outputs=[],
            model=model,
            show_progress=ctx.show_progress,
            telemetry=tel,
            detector=detector,
        )
        base_out = state.baseline_outputs = state.holdout_outputs(baseline_path, "baseline")
        if detector:
            check_detector_outputs(base_out)
        base_acc = accuracy(base_out, split.holdout_labels) if use_labels and not detector else None
        if base_acc is not None:
            tel.evaluation("baseline_accuracy", base_acc)
        lap("baseline")
        tel.progress(0.1)

        # ---- the recipe's modifiers: pruning, then INT8 -------------------------------------
        results: list[ModifierResult] = []
        for modifier in modifiers:
            modifier.initialize(state)
            result = modifier.finalize(state)
            results.append(result)
            notes.extend(result.notes)
            effective.update({k: v for k, v in result.info.items() if k not in _NOT_SETTINGS})
            for name in result.timings_s:
                lap(name)
            tel.progress(0.8 if "int8" in result.info else 0.5)
        state.model = model = None
        info = {k: v for r in results for k, v in r.info.items()}
        if info.get("channels_rejected"):
            mode = "quantization-only" if int8 else "baseline"
        channel_info = info.get("channel_summary")
        pruned_layers = next((r.layers for r in results if r.layers), None)
        candidates = [c for r in results for c in r.candidates]
        int8_applied = bool(info.get("int8_applied"))

        # ---- write model.onnx (temporary name, then rename) ---------------------------------
        tel.stage("export")
        partial = ctx.work_dir / f".{MODEL_FILE}.partial"
        shutil.copyfile(state.current, partial)
        if state.current != baseline_path:  # keep the input's serving card (preprocessing, class names)
            from ..model_card import carry_over

            carry_over(baseline_path, partial)
        os.replace(partial, ctx.work_dir / MODEL_FILE)
        final_path = ctx.work_dir / MODEL_FILE

        # ---- evaluate on held-out samples (a model already run is not run again) ----------
        tel.stage("evaluate")
        opt_out = state.holdout_outputs(state.current, "optimized")
        fid = state.fidelity(state.current, "optimized")
        opt_acc = accuracy(opt_out, split.holdout_labels) if use_labels and not detector else None
        tel.evaluation("fidelity", fidelity_score(fid))
        if opt_acc is not None:
            tel.evaluation("accuracy", opt_acc)
        lap("evaluate")
        tel.progress(0.85)

        # ---- benchmark -------------------------------------------------------------------
        tel.stage("benchmark")
        base_lat, opt_lat = measure_latency(
            [baseline_path, final_path],
            batch_size=exp.deploy.batch_size,
            device=exp.deploy.device,
            seconds=recipe.benchmark_seconds,
            show_progress=ctx.show_progress,
        )
        lap("benchmark")
        tel.progress(0.95)

    baseline = model_stats(baseline_path).model_copy(update={"accuracy": base_acc, "latency": base_lat})
    optimized = model_stats(final_path).model_copy(update={"accuracy": opt_acc, "latency": opt_lat})
    if use_labels and detector:  # mAP on the held-out samples' boxes
        set_detection_metrics(baseline, optimized, base_out, opt_out, split.holdout_labels)
        tel.evaluation("map", optimized.map)
    if use_labels and exp.eval_metric in ("f1", "recall"):  # macro scores on the held-out labels
        from ..evaluate import macro_f1, macro_recall

        for stats, outs in ((baseline, base_out), (optimized, opt_out)):
            stats.f1 = round(macro_f1(outs, split.holdout_labels), 5)
            stats.recall = round(macro_recall(outs, split.holdout_labels), 5)
        tel.evaluation(exp.eval_metric, getattr(optimized, exp.eval_metric))
    speedup = measured_speedup(baseline, optimized)
    if mode != "baseline" and not int8_applied and target == 0:
        notes.append(
            "the returned model equals the baseline: INT8 did not pay off within the fidelity budget"
        )
    if target > 0 and not channels:
        notes.append(
            f"file size {baseline.file_size_bytes / 1e6:.1f} -> {optimized.file_size_bytes / 1e6:.1f} MB, "
            f"gzip {baseline.compressed_size_bytes / 1e6:.1f} -> "
            f"{optimized.compressed_size_bytes / 1e6:.1f} MB: zeros from unstructured sparsity are "
            "stored densely, so only the compressed size shrinks from them"
        )
    if speedup is not None and speedup < 1.0 and mode != "baseline":
        notes.append(
            f"the optimized model measured {speedup:.3f}x (slower) in the final benchmark; "
            "timings on a busy machine vary, rerun sparsifyctl benchmark to confirm"
        )
    report = Report.of(
        experiment=exp.to_wire(),
        mode=mode,
        settings=effective,
        baseline=baseline,
        optimized=optimized,
        fidelity=fid,
        layers=_merge_layers(layer_sparsity(final_path), pruned_layers),
        candidates=candidates,
        speedup_source=explain_speedup(
            mode,
            speedup,
            int8=f"{info['int8']['chosen']}, onnxruntime integer kernels" if int8_applied else None,
            sparsity=optimized.sparsity if target > 0 and not channels else 0.0,
            channels=ChannelCounts(**channel_info) if channel_info else None,
        ),
        notes=notes,
        timings_s=timings,
    )
    tel.progress(1.0)
    return report


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


# modifier results that describe the run but are not settings of it
_NOT_SETTINGS = ("channel_summary", "int8_applied")
