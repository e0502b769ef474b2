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
    if s["pruning_allocation"] not in ("erk", "sensitivity"):
        raise bad("pruning_allocation", "erk or sensitivity")
    if s["quantize"] not in ("auto", True, False):
        raise bad("quantize", "auto, true or false")
    if not isinstance(s["int8_equalization"], bool):
        raise bad("int8_equalization", "true or false")
    if s["quant_format"] not in (None, "auto", "qdq", "qoperator"):
        raise bad("quant_format", "null, auto, qdq or qoperator")
    loss = s["max_int8_fidelity_loss"]
    if isinstance(loss, bool) or not isinstance(loss, int | float) or not 0.0 <= loss <= 1.0:
        raise bad("max_int8_fidelity_loss", "a number in [0, 1]")
    for key in ("calibration_samples", "max_holdout_samples", "sensitivity_samples"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise bad(key, "a positive integer")
    hf = s["holdout_fraction"]
    if isinstance(hf, bool) or not isinstance(hf, int | float) or not 0.0 < hf < 1.0:
        raise bad("holdout_fraction", "a number in (0, 1)")
    mr = s["macs_reduction"]
    if mr is not None and (isinstance(mr, bool) or not isinstance(mr, int | float) or not 0.0 <= mr < 1.0):
        raise bad("macs_reduction", "null or a number in [0, 1)")
    rt = s["round_channels_to"]
    if isinstance(rt, bool) or not isinstance(rt, int) or rt < 1:
        raise bad("round_channels_to", "a positive integer")
    fl = s["max_channels_fidelity_loss"]
    if isinstance(fl, bool) or not isinstance(fl, int | float) or not 0.0 <= fl <= 1.0:
        raise bad("max_channels_fidelity_loss", "a number in [0, 1]")
    mx = s["max_channels_removed"]
    if isinstance(mx, bool) or not isinstance(mx, int | float) or not 0.0 < mx < 1.0:
        raise bad("max_channels_removed", "a number in (0, 1)")
    for key in ("benchmark_seconds", "int8_candidate_seconds", "int8_search_seconds"):
        if isinstance(s[key], bool) or not isinstance(s[key], int | float) or s[key] <= 0:
            raise bad(key, "a positive number")


def _speedup_source(
    mode: str, speedup: float | None, int8: bool, sparsity: float, channels: dict | None = None
) -> str:
    sp = f"{speedup:.2f}x" if speedup else "no measurable change"
    if mode == "baseline":
        return "optim level 0: the baseline model is returned unchanged, so there is no speedup"
    parts = []
    if channels:
        before, after = channels["macs_before"], channels["macs_after"]
        parts.append(
            f"measured speedup {sp} comes from removing {channels['removed']} of {channels['total']} "
            f"removable channels ({channels['groups']} layer groups): MACs {before / 1e6:.1f}M "
            f"-> {after / 1e6:.1f}M ({after / max(1, before):.1%} kept), fewer FLOPs on any runtime"
            + ("; plus INT8 quantization (onnxruntime integer kernels)" if int8 else "; INT8 was not applied")
        )
        return "; ".join(parts)
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
    channels = exp.structure == "channels"
    if channels and (settings["pruning_method"] or exp.pruning_method) != "obs":
        raise InputError(
            "--structure channels selects channels with the calibration Hessian (structured OBS) and has "
            "no magnitude variant; use --pruning-method obs (the default) or --structure unstructured"
        )
    if exp.eval_metric == "mAP":
        raise InputError(
            "eval metric 'mAP' needs box labels, which one-shot .npz samples do not carry (there is no "
            "detection pathway yet); use --eval-metric fidelity"
        )
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
    if channels:  # channels: the optim level sets a MAC reduction instead of a weight sparsity
        from ..recipes import macs_reduction_for_level

        mr = settings["macs_reduction"]
        target = float(mr) if mr is not None else macs_reduction_for_level(ExperimentType.one_shot, level)
    int8 = level > 0 if settings["quantize"] == "auto" else bool(settings["quantize"])
    method = settings["pruning_method"] or exp.pruning_method
    fmt = settings["quant_format"] or exp.deploy.quant_format
    fmt = "qdq" if fmt == "auto" else fmt
    baseline_only = target == 0.0 and not int8

    model, inputs = load_static_model(ctx.model_path)
    data = load_npz_folder(ctx.data_path, inputs, show_progress=ctx.show_progress)
    if exp.eval_metric in ("accuracy", "f1", "recall") and data.labels is None:
        raise InputError(
            f"eval metric '{exp.eval_metric}' needs labels: add an integer 'label' key to every .npz file in "
            f"'{ctx.data_path}', or use --eval-metric fidelity"
        )
    split = split_samples(
        data,
        holdout_fraction=float(settings["holdout_fraction"]),
        max_holdout=exp.val_samples or int(settings["max_holdout_samples"]),
        calibration_samples=exp.train_samples or int(settings["calibration_samples"]),
    )
    use_labels = split.holdout_labels is not None and exp.eval_metric != "fidelity"
    notes: list[str] = list(split.notes)
    lap("load")
    tel.progress(0.05)

    baseline_path = Path(ctx.model_path)
    pruned_mode = "channels" if channels else "unstructured"
    mode = "baseline" if baseline_only else (pruned_mode if target > 0 else "quantization-only")
    channel_info: dict[str, Any] | None = None
    candidates: list[CandidateRecord] = []
    pruned_layers: list[LayerReport] | None = None
    int8_applied = False
    effective: dict[str, Any] = {
        "optim_level": level,
        "structure": exp.structure,
        ("target_macs_reduction" if channels else "target_sparsity"): target,
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
        if target > 0 and channels:
            import onnx

            from ..modifiers.channel_selection import prune_channels

            tel.stage("prune")
            cres = prune_channels(
                model,
                split.calibration,
                target,
                round_to=int(settings["round_channels_to"]),
                max_fraction=float(settings["max_channels_removed"]),
                show_progress=ctx.show_progress,
            )
            current = build / "pruned.onnx"
            onnx.save(cres.model, str(current))
            pruned_layers = cres.layers
            notes.extend(cres.notes)
            channel_info = {
                "removed": cres.channels_removed,
                "total": cres.channels_total,
                "groups": cres.groups,
                "macs_before": cres.macs_before,
                "macs_after": cres.macs_after,
            }
            effective["achieved_macs_fraction"] = round(cres.macs_after / max(1, cres.macs_before), 6)
            effective["channels"] = {**channel_info, "timings_s": cres.timings_s}
            tel.evaluation("macs_fraction", effective["achieved_macs_fraction"])
            lap("prune")
            show = "evaluate pruned" if ctx.show_progress else None
            pruned_fid = fidelity(base_out, run_onnx(current, split.holdout, progress=show))
            effective["pruned_fidelity"] = round(fidelity_score(pruned_fid), 6)
            floor = 1.0 - float(settings["max_channels_fidelity_loss"])
            if fidelity_score(pruned_fid) < floor:
                # never hand back a model that lost what channel pruning cost here: keep the
                # graph's channels and say so (INT8 below still applies)
                notes.append(
                    f"channel pruning to {effective['achieved_macs_fraction']:.0%} of the MACs kept only "
                    f"{fidelity_score(pruned_fid):.1%} fidelity to the baseline (floor {floor:.0%}, "
                    "max_channels_fidelity_loss), so no channels were removed; lower --optim-level or "
                    "use training-aware --structure channels, which recovers accuracy by fine-tuning"
                )
                current, pruned_layers, channel_info = baseline_path, None, None
                mode = "quantization-only" if int8 else "baseline"
                effective["channels_rejected"] = True
            tel.progress(0.5)
        elif target > 0:
            import onnx

            from ..modifiers.onnx_pruning import prune_onnx

            tel.stage("prune")
            result = prune_onnx(
                model,
                split.calibration,
                target,
                method=method,
                show_progress=ctx.show_progress,
                allocation=settings["pruning_allocation"],
                sensitivity_samples=int(settings["sensitivity_samples"]),
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
        if current != baseline_path:  # keep the input's serving card (preprocessing, class names)
            from ..model_card import carry_over

            carry_over(baseline_path, partial)
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
    if use_labels and exp.eval_metric in ("f1", "recall"):  # macro scores on the held-out labels
        from ..evaluate import macro_f1, macro_recall

        for stats, outs in ((baseline, base_out), (optimized, opt_out)):
            stats.f1 = round(macro_f1(outs, split.holdout_labels), 5)
            stats.recall = round(macro_recall(outs, split.holdout_labels), 5)
        tel.evaluation(exp.eval_metric, getattr(optimized, exp.eval_metric))
    speedup = round(base_lat.mean_ms / opt_lat.mean_ms, 4) if opt_lat.mean_ms > 0 else None
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
            mode,
            speedup,
            int8_applied,
            optimized.sparsity if target > 0 and not channels else 0.0,
            channel_info,
        ),
        notes=notes,
        timings_s=timings,
    )
    tel.progress(1.0)
    return report
