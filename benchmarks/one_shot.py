"""One-shot benchmark: MobileNetV2 (pretrained) and ResNet-50 (random weights) at optim levels
0, 0.2, 0.5, 0.8 vs onnxruntime's stock ``quantize_static`` (default settings), on onnxruntime CPU.

Prints one JSON document. Every ratio is measured side by side in this one process:
the one-shot runs benchmark baseline vs optimized alternately, and the stock peer is timed
in one alternating session with the baseline and our level-0.2 model.

    python benchmarks/one_shot.py [--models mobilenet_v2 resnet50] [--levels 0 0.2 0.5 0.8]
        [--structures unstructured channels]

Levels of the ``channels`` structure are keyed ``channels:LEVEL`` (levels below 0.3 are
INT8 only whatever the structure, so they run once, under ``unstructured``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))


def _stock_quantize(model: Path, calibration: list, out: Path) -> float:
    """What a user does by hand: quantize_static with default settings (after nothing)."""
    import logging

    from onnxruntime.quantization import quantize_static
    from sparsify_runner.modifiers.int8.candidates import CalibrationReader

    logging.getLogger().setLevel(logging.ERROR)
    started = time.perf_counter()
    quantize_static(str(model), str(out), CalibrationReader(calibration, 1))
    return round(time.perf_counter() - started, 2)


def _noise_floor(model: Path, holdout: list, base_out: list) -> dict:
    """How faithful the FP32 model is to itself when each input pixel moves by at most half an
    8-bit step (uniform noise of +-0.5/255 in [0, 1] pixel units, ImageNet-normalized): the
    agreement no 8-bit representation of these inputs can be expected to beat."""
    import assets
    import numpy as np
    from sparsify_runner.evaluate import fidelity, run_onnx

    rng = np.random.default_rng(0)
    step = (0.5 / 255.0) / np.asarray(assets.IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    noisy = [
        {k: v + (rng.uniform(-1.0, 1.0, v.shape) * step).astype(np.float32) for k, v in s.items()}
        for s in holdout
    ]
    fid = fidelity(base_out, run_onnx(model, noisy))
    return {"top1_agreement": fid.top1_agreement, "cosine": fid.cosine_similarity}


def _most_faithful_at(candidates: list[dict], speedup: float) -> dict | None:
    """The most faithful INT8 candidate of our level-0.2 search that ran at least as fast as
    the stock quantizer (each candidate's speedup was timed next to FP32 during the search):
    the comparison "fidelity at equal or better speed", whether or not the budget let it ship."""
    fast = [c for c in candidates if c["name"] != "fp32" and (c["speedup"] or 0.0) >= speedup]
    return max(fast, key=lambda c: (c["fidelity"], c["cosine"] or 0.0), default=None)


def bench_model(
    name: str,
    model: Path,
    data: Path,
    levels: list[float],
    work: Path,
    seconds: float,
    overrides: dict,
    structures: tuple[str, ...] = ("unstructured",),
) -> dict:
    from sparsify_runner.benchmark import measure_latency
    from sparsify_runner.data.npz import load_npz_folder, split_samples
    from sparsify_runner.evaluate import fidelity, run_onnx
    from sparsify_runner.onnx_model import load_static_model
    from sparsify_runner.run import run_experiment
    from sparsify_runner.spec import parse_experiment

    result: dict = {"model": name, "levels": {}}
    points = [
        (structure, level)
        for structure in structures
        for level in levels
        if structure == "unstructured" or level >= 0.3
    ]
    for structure, level in points:
        key = str(level) if structure == "unstructured" else f"{structure}:{level}"
        out = work / f"{name}-{key.replace(':', '-')}"
        exp = parse_experiment(
            {
                "type": "one-shot",
                "useCase": "image-classification",
                "model": str(model),
                "data": str(data),
                "optimLevel": level,
                "output": str(out),
                "structure": structure,
                "recipeArgs": {"benchmark_seconds": seconds, **overrides},
            }
        )
        started = time.perf_counter()
        report = run_experiment(exp, show_progress=False, termination_log="")
        wall = round(time.perf_counter() - started, 1)
        chosen = next((c.name for c in report.candidates if c.chosen), None)
        entry = {
            "mode": report.mode,
            "speedup": report.speedup,
            "top1_agreement": report.fidelity.top1_agreement if report.fidelity else None,
            "cosine": report.fidelity.cosine_similarity if report.fidelity else None,
            "sparsity": report.optimized.sparsity,
            "file_size_mb": round(report.optimized.file_size_bytes / 1e6, 2),
            "gzip_size_mb": round(report.optimized.compressed_size_bytes / 1e6, 2),
            "baseline_file_size_mb": round(report.baseline.file_size_bytes / 1e6, 2),
            "baseline_gzip_size_mb": round(report.baseline.compressed_size_bytes / 1e6, 2),
            "baseline_ms": report.baseline.latency.mean_ms,
            "optimized_ms": report.optimized.latency.mean_ms,
            "int8_chosen": chosen,
            "int8_candidates": [
                {
                    "name": c.name,
                    "speedup": c.speedup,
                    "fidelity": c.fidelity,
                    "cosine": c.cosine,
                    "chosen": c.chosen,
                }
                for c in report.candidates
            ],
            "pruned_fidelity": report.settings.get("pruned_fidelity"),
            "baseline_macs": report.baseline.flops,
            "optimized_macs": report.optimized.flops,
            "achieved_macs_fraction": report.settings.get("achieved_macs_fraction"),
            "speedup_source": report.speedup_source,
            "one_shot_wall_s": wall,
            "timings_s": report.timings_s,
        }
        result["levels"][key] = entry
        print(json.dumps({name: {key: entry}}), file=sys.stderr, flush=True)

    # the stock peer, same calibration / held-out split as the one-shot runs
    model_proto, inputs = load_static_model(model)
    del model_proto
    split = split_samples(load_npz_folder(data, inputs))
    stock = work / f"{name}-stock.onnx"
    q_time = _stock_quantize(model, split.calibration, stock)
    base_out = run_onnx(model, split.holdout)
    fid = fidelity(base_out, run_onnx(stock, split.holdout))
    ours = work / f"{name}-0.2" / "model.onnx"
    paths = [model, stock] + ([ours] if ours.is_file() else [])
    lat = measure_latency(paths, seconds=seconds)
    peer = {
        "stock_quantize_static": {
            "speedup": round(lat[0].mean_ms / lat[1].mean_ms, 4),
            "top1_agreement": fid.top1_agreement,
            "cosine": fid.cosine_similarity,
            "quantize_wall_s": q_time,
            "file_size_mb": round(stock.stat().st_size / 1e6, 2),
        },
    }
    if ours.is_file():
        ours_fid = fidelity(base_out, run_onnx(ours, split.holdout))
        peer["ours_level_0.2_same_session"] = {
            "speedup": round(lat[0].mean_ms / lat[2].mean_ms, 4),
            "top1_agreement": ours_fid.top1_agreement,
            "cosine": ours_fid.cosine_similarity,
        }
    peer["ours_most_faithful_at_stock_speed"] = _most_faithful_at(
        result["levels"].get("0.2", {}).get("int8_candidates", []), peer["stock_quantize_static"]["speedup"]
    )
    peer["fp32_input_noise_floor"] = _noise_floor(model, split.holdout, base_out)
    result["peer"] = peer
    print(json.dumps({name: peer}), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.2, 0.5, 0.8])
    parser.add_argument(
        "--samples", type=int, default=320, help="npz samples (20%% held out, rest calibrates)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="benchmark seconds per model")
    parser.add_argument("--recipe-args", default="{}", help="JSON recipe overrides for every one-shot run")
    parser.add_argument(
        "--structures", nargs="+", default=["unstructured"], choices=["unstructured", "channels"]
    )
    args = parser.parse_args()

    import os

    import assets
    import onnxruntime
    import torch

    torch.set_num_threads(2)
    out: dict = {
        "cpu_count": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "samples": args.samples,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        work = Path(tmp)
        data = assets.write_samples(work / "samples", args.samples)
        builders = {"mobilenet_v2": assets.build_mobilenet_v2, "resnet50": assets.build_resnet50}
        for name in args.models:
            model = builders[name](work / f"{name}.onnx")
            overrides = json.loads(args.recipe_args)
            out["results"].append(
                bench_model(
                    name, model, data, args.levels, work, args.seconds, overrides, tuple(args.structures)
                )
            )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
