"""One-shot pathway: an ONNX model + .npz calibration samples -> pruned and/or INT8 model.onnx.

validate everything (recipe, model, samples) before any work -> baseline outputs on the
held-out samples -> prune (optim level >= 0.3) -> INT8 (optim level > 0, chosen by
measurement) -> evaluate on held-out samples -> benchmark baseline vs optimized -> Report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..context import RunContext
from ..errors import InputError
from ..report import CandidateRecord, LayerReport, Report
from ..spec import ExperimentType

MODEL_FILE = "model.onnx"


def _check_settings(s: dict[str, Any]) -> None:
    def bad(key: str, want: str) -> InputError:
        return InputError(
            f"recipe setting '{key}' must be {want}, got {s[key]!r}; fix --recipe / --recipe-args"
        )

    sp = s["sparsity"]
    if sp is not None and (isinstance(sp, bool) or not isinstance(sp, int | float) or not 0.0 <= sp < 1.0):
        raise bad("sparsity", "null or a number in [0, 1)")
    if s["pruning_method"] not in (None, "obs", "magnitude"):
        raise bad("pruning_method", "null, obs or magnitude")
    if s["quantize"] not in ("auto", True, False):
        raise bad("quantize", "auto, true or false")
    if not isinstance(s["int8_equalization"], bool):
        raise bad("int8_equalization", "true or false")
    if s["quant_format"] not in (None, "auto", "qdq", "qoperator"):
        raise bad("quant_format", "null, auto, qdq or qoperator")
    loss = s["max_int8_fidelity_loss"]
    if isinstance(loss, bool) or not isinstance(loss, int | float) or not 0.0 <= loss <= 1.0:
        raise bad("max_int8_fidelity_loss", "a number in [0, 1]")
    for key in ("calibration_samples", "max_holdout_samples"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise bad(key, "a positive integer")
    hf = s["holdout_fraction"]
    if isinstance(hf, bool) or not isinstance(hf, int | float) or not 0.0 < hf < 1.0:
        raise bad("holdout_fraction", "a number in (0, 1)")
    for key in ("benchmark_seconds", "int8_candidate_seconds", "int8_search_seconds"):
        if isinstance(s[key], bool) or not isinstance(s[key], int | float) or s[key] <= 0:
            raise bad(key, "a positive number")


def _speedup_source(mode: str, speedup: float | None, int8: bool, sparsity: float) -> str:
    sp = f"{speedup:.2f}x" if speedup else "no measurable change"
    if mode == "baseline":
        return "optim level 0: the baseline model is returned unchanged, so there is no speedup"
    parts = []
    if int8:
        parts.append(f"measured speedup {sp} comes from INT8 quantization (onnxruntime integer kernels)")
    else:
        parts.append(f"measured speedup {sp}: INT8 was not applied, so no speedup is expected")
    if sparsity > 0:
        parts.append(
            f"the {sparsity:.0%} unstructured sparsity makes the model smaller once compressed, but "
            "onnxruntime runs sparse weights as dense, so it contributes no speed"
        )
    return "; ".join(parts)


def _merge_layers(final: list[LayerReport], pruned: list[LayerReport] | None) -> list[LayerReport]:
    if not pruned:
        return final
    by_name = {ly.name: ly for ly in pruned}
    merged = []
    for ly in final:
        src = by_name.get(ly.name)
        merged.append(ly.model_copy(update={"note": src.note}) if src is not None and src.note else ly)
    return merged


def run(ctx: RunContext) -> Report:
    from ..benchmark import measure_latency
    from ..data.npz import load_npz_folder, split_samples
    from ..evaluate import accuracy, fidelity, fidelity_score, run_onnx
    from ..modelstats import layer_sparsity, model_stats
    from ..onnx_model import load_static_model
    from ..recipes import load_recipe, packaged_recipe, sparsity_for_level

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
    settings = load_recipe(packaged_recipe("one_shot"), exp, ctx.recipe_path)
    _check_settings(settings)
    if exp.structure != "unstructured":
        raise InputError(
            f"structure '{exp.structure}' is not available for one-shot (ONNX graphs keep their shapes); "
            "use --structure unstructured, or training-aware for channel pruning"
        )
    if exp.eval_metric == "f1":
        raise InputError("eval metric 'f1' is not available for one-shot; use auto, accuracy or fidelity")
    if ctx.model_path is None:
        raise InputError("one-shot needs an ONNX model; pass --model MODEL.onnx")
    level = float(exp.optim_level)
    target = (
        float(settings["sparsity"])
        if settings["sparsity"] is not None
        else sparsity_for_level(ExperimentType.one_shot, level)
    )
    if level == 0.0 and settings["sparsity"] is None:
        target = 0.0
    int8 = level > 0 if settings["quantize"] == "auto" else bool(settings["quantize"])
    method = settings["pruning_method"] or exp.pruning_method
    fmt = settings["quant_format"] or exp.deploy.quant_format
    fmt = "qdq" if fmt == "auto" else fmt
    baseline_only = target == 0.0 and not int8

    model, inputs = load_static_model(ctx.model_path)
    data = load_npz_folder(ctx.data_path, inputs, show_progress=ctx.show_progress)
    if exp.eval_metric == "accuracy" and data.labels is None:
        raise InputError(
            f"eval metric 'accuracy' needs labels: add an integer 'label' key to every .npz file in "
            f"'{ctx.data_path}', or use --eval-metric fidelity"
        )
    split = split_samples(
        data,
        holdout_fraction=float(settings["holdout_fraction"]),
        max_holdout=int(settings["max_holdout_samples"]),
        calibration_samples=int(settings["calibration_samples"]),
    )
    use_labels = split.holdout_labels is not None and exp.eval_metric != "fidelity"
    notes: list[str] = list(split.notes)
    lap("load")
    tel.progress(0.05)

    baseline_path = Path(ctx.model_path)
    mode = "baseline" if baseline_only else ("unstructured" if target > 0 else "quantization-only")
    candidates: list[CandidateRecord] = []
    pruned_layers: list[LayerReport] | None = None
    int8_applied = False
    effective: dict[str, Any] = {
        "optim_level": level,
        "target_sparsity": target,
        "pruning_method": method if target > 0 else None,
        "quantize": int8,
        "quant_format": fmt if int8 else None,
        "calibration_samples": len(split.calibration),
        "holdout_samples": len(split.holdout),
        "holdout_disjoint": split.disjoint,
        "labels": data.labels is not None,
        "recipe": settings,
    }

    with tempfile.TemporaryDirectory(prefix="sparsify-oneshot-") as build_name:
        build = Path(build_name)
        # ---- baseline --------------------------------------------------------------------
        tel.stage("baseline")
        show = "evaluate baseline" if ctx.show_progress else None
        base_out = run_onnx(baseline_path, split.holdout, progress=show)
        base_acc = accuracy(base_out, split.holdout_labels) if use_labels else None
        if base_acc is not None:
            tel.evaluation("baseline_accuracy", base_acc)
        lap("baseline")
        tel.progress(0.1)
        current = baseline_path

        # ---- prune -------------------------------------------------------------------------
        if target > 0:
            import onnx

            from ..modifiers.onnx_pruning import prune_onnx

            tel.stage("prune")
            result = prune_onnx(
                model, split.calibration, target, method=method, show_progress=ctx.show_progress
            )
            current = build / "pruned.onnx"
            onnx.save(result.model, str(current))
            pruned_layers = result.layers
            notes.extend(result.notes)
            effective["achieved_sparsity"] = round(result.achieved_sparsity, 6)
            tel.evaluation("sparsity", result.achieved_sparsity)
            lap("prune")
            show = "evaluate pruned" if ctx.show_progress else None
            pruned_fid = fidelity(base_out, run_onnx(current, split.holdout, progress=show))
            effective["pruned_fidelity"] = round(fidelity_score(pruned_fid), 6)
            tel.progress(0.5)
        del model

        # ---- INT8 --------------------------------------------------------------------------
        if int8:
            from ..modifiers.quantization import quantize_int8

            tel.stage("quantize")
            q = quantize_int8(
                current,
                split.calibration,
                build / "int8.onnx",
                holdout=split.holdout,
                quant_format=fmt,
                max_fidelity_loss=float(settings["max_int8_fidelity_loss"]),
                show_progress=ctx.show_progress,
                bench_seconds=float(settings["int8_candidate_seconds"]),
                time_budget_s=float(settings["int8_search_seconds"]),
                equalize=settings["int8_equalization"],
            )
            candidates = q.candidates
            notes.extend(q.notes)
            int8_applied = q.quantized
            effective["int8"] = {"chosen": q.chosen, "fp32_nodes": q.fp32_nodes, **q.settings}
            current = q.path
            lap("quantize")
            tel.progress(0.8)

        # ---- write model.onnx (temporary name, then rename) ---------------------------------
        tel.stage("export")
        partial = ctx.work_dir / f".{MODEL_FILE}.partial"
        shutil.copyfile(current, partial)
        os.replace(partial, ctx.work_dir / MODEL_FILE)
        final_path = ctx.work_dir / MODEL_FILE

        # ---- evaluate on held-out samples ---------------------------------------------------
        tel.stage("evaluate")
        show = "evaluate optimized" if ctx.show_progress else None
        opt_out = run_onnx(final_path, split.holdout, progress=show)
        fid = fidelity(base_out, opt_out)
        opt_acc = accuracy(opt_out, split.holdout_labels) if use_labels else None
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
            seconds=float(settings["benchmark_seconds"]),
            show_progress=ctx.show_progress,
        )
        lap("benchmark")
        tel.progress(0.95)

    baseline = model_stats(baseline_path).model_copy(update={"accuracy": base_acc, "latency": base_lat})
    optimized = model_stats(final_path).model_copy(update={"accuracy": opt_acc, "latency": opt_lat})
    speedup = round(base_lat.mean_ms / opt_lat.mean_ms, 4) if opt_lat.mean_ms > 0 else None
    if mode != "baseline" and not int8_applied and target == 0:
        notes.append(
            "the returned model equals the baseline: INT8 did not pay off within the fidelity budget"
        )
    if target > 0:
        notes.append(
            f"file size {baseline.file_size_bytes / 1e6:.1f} -> {optimized.file_size_bytes / 1e6:.1f} MB, "
            f"gzip {baseline.compressed_size_bytes / 1e6:.1f} -> "
            f"{optimized.compressed_size_bytes / 1e6:.1f} MB: zeros from unstructured sparsity are "
            "stored densely, so only the compressed size shrinks from them"
        )
    if speedup is not None and speedup < 1.0 and mode != "baseline":
        notes.append(
            f"the optimized model measured {speedup:.2f}x (slower) in the final benchmark; "
            "timings on a busy machine vary, rerun sparsifyctl benchmark to confirm"
        )
    report = Report(
        experiment=exp.to_wire(),
        mode=mode,
        settings=effective,
        baseline=baseline,
        optimized=optimized,
        fidelity=fid,
        speedup=speedup,
        size_ratio=round(optimized.file_size_bytes / baseline.file_size_bytes, 4),
        compressed_size_ratio=round(optimized.compressed_size_bytes / baseline.compressed_size_bytes, 4),
        layers=_merge_layers(layer_sparsity(final_path), pruned_layers),
        candidates=candidates,
        speedup_source=_speedup_source(
            mode, speedup, int8_applied, optimized.sparsity if target > 0 else 0.0
        ),
        notes=notes,
        timings_s=timings,
    )
    tel.progress(1.0)
    return report
