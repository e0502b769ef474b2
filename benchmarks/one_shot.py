"""One-shot benchmark: MobileNetV2 (pretrained, photo crops, no labels), ResNet-50 (random
weights), MiniLM-L6 fine-tuned on Rotten Tomatoes (``minilm_rt``: 500 labelled held-out
sentences, 1 x 128 tokens) and MobileNetV2 fine-tuned on MNIST digits (``mobilenet_mnist``:
500 labelled held-out digits, 1 x 3 x 96 x 96; ``examples/mnist_assets.py``) at optim levels
0, 0.2, 0.5, 0.8 vs onnxruntime's stock
``quantize_static`` (default settings) and, for MiniLM, ``quantize_dynamic`` (what a CPU user
of a transformer would pick), on onnxruntime CPU.

Prints one JSON document. Every ratio is measured side by side in this one process:
the one-shot runs benchmark baseline vs optimized alternately, and the stock peer is timed
in one alternating session with the baseline and our level-0.2 model.

    python benchmarks/one_shot.py [--models mobilenet_v2 resnet50 minilm_rt mobilenet_mnist]
        [--levels 0 0.2 0.5 0.8] [--structures unstructured channels] [--repeats 1]

``--repeats N`` runs each level N times: the entries ``LEVEL#2`` ... and the top-level
``same_choice`` (did every repeat ship the same candidate, byte for byte?) show whether the
same inputs give the same model.

Levels of the ``channels`` structure are keyed ``channels:LEVEL`` (levels below 0.3 are
INT8 only whatever the structure, so they run once, under ``unstructured``).
"""

from __future__ import annotations

import argparse
import hashlib
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


def bench_model(
    name: str,
    model: Path,
    data: Path,
    levels: list[float],
    work: Path,
    seconds: float,
    overrides: dict,
    structures: tuple[str, ...] = ("unstructured",),
    use_case: str = "image-classification",
    repeats: int = 1,
) -> dict:
    from sparsify_runner.benchmark import measure_latency
    from sparsify_runner.data.npz import load_npz_folder, split_samples
    from sparsify_runner.evaluate import fidelity, run_onnx
    from sparsify_runner.onnx_model import load_static_model
    from sparsify_runner.run import run_experiment
    from sparsify_runner.spec import parse_experiment

    result: dict = {"model": name, "levels": {}}
    points = [
        (structure, level, repeat)
        for structure in structures
        for level in levels
        if structure == "unstructured" or level >= 0.3
        for repeat in range(1, repeats + 1)
    ]
    shipped: dict[str, set[str]] = {}
    for structure, level, repeat in points:
        point = str(level) if structure == "unstructured" else f"{structure}:{level}"
        key = point if repeat == 1 else f"{point}#{repeat}"
        out = work / f"{name}-{key.replace(':', '-').replace('#', '-r')}"
        exp = parse_experiment(
            {
                "type": "one-shot",
                "useCase": use_case,
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
        policy = report.policy or {}
        entry = {
            "mode": report.mode,
            "speedup": report.speedup,
            "speed": report.speed.model_dump() if report.speed else None,
            "budget": policy.get("max_accuracy_drop"),
            "result": policy.get("result"),
            "baseline_accuracy": report.baseline.accuracy,
            "accuracy": report.optimized.accuracy,
            "top1_agreement": report.fidelity.top1_agreement if report.fidelity else None,
            "cosine": report.fidelity.cosine_similarity if report.fidelity else None,
            "sparsity": report.optimized.sparsity,
            "file_size_mb": round(report.optimized.file_size_bytes / 1e6, 2),
            "gzip_size_mb": round(report.optimized.compressed_size_bytes / 1e6, 2),
            "baseline_file_size_mb": round(report.baseline.file_size_bytes / 1e6, 2),
            "baseline_gzip_size_mb": round(report.baseline.compressed_size_bytes / 1e6, 2),
            "baseline_median_ms": report.baseline.latency.median_ms,
            "optimized_median_ms": report.optimized.latency.median_ms,
            "chosen": chosen,
            "candidates": [
                {
                    "name": c.name,
                    "stage": c.stage,
                    "speedup": c.speedup,
                    "accuracy_drop": c.accuracy_drop,
                    "fidelity": c.fidelity,
                    "cosine": c.cosine,
                    "pareto": c.pareto,
                    "chosen": c.chosen,
                }
                for c in report.candidates
            ],
            "baseline_macs": report.baseline.flops,
            "optimized_macs": report.optimized.flops,
            "achieved_macs_fraction": report.settings.get("achieved_macs_fraction"),
            "speedup_source": report.speedup_source,
            "one_shot_wall_s": wall,
            "timings_s": report.timings_s,
        }
        result["levels"][key] = entry
        digest = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
        shipped.setdefault(point, set()).add(digest)
        print(json.dumps({name: {key: entry}}), file=sys.stderr, flush=True)

    if repeats > 1:
        result["same_choice"] = {point: len(digests) == 1 for point, digests in shipped.items()}
    # the stock peer, same calibration / held-out split as the one-shot runs
    model_proto, inputs = load_static_model(model)
    del model_proto
    split = split_samples(
        load_npz_folder(data, inputs),
        **{k: overrides[k] for k in ("holdout_fraction", "calibration_samples") if k in overrides},
        max_holdout=overrides.get("max_holdout_samples", 200),
    )
    stock = work / f"{name}-stock.onnx"
    q_time = _stock_quantize(model, split.calibration, stock)
    peers = {"stock_quantize_static": stock}
    if use_case == "text-classification":
        from onnxruntime.quantization import quantize_dynamic

        dynamic = work / f"{name}-stock-dynamic.onnx"
        quantize_dynamic(str(model), str(dynamic))
        peers["stock_quantize_dynamic"] = dynamic
    base_out = run_onnx(model, split.holdout)
    ours = work / f"{name}-0.2" / "model.onnx"
    paths = [model, *peers.values()] + ([ours] if ours.is_file() else [])
    lat = measure_latency(paths, seconds=seconds)
    labels = split.holdout_labels

    def measured(path: Path, stats) -> dict:
        from sparsify_runner.evaluate import accuracy

        out = run_onnx(path, split.holdout)
        fid = fidelity(base_out, out)
        return {
            "speedup_median": round(lat[0].median_ms / stats.median_ms, 4),
            "top1_agreement": fid.top1_agreement,
            "cosine": fid.cosine_similarity,
            "accuracy": None if labels is None else round(accuracy(out, labels), 4),
            "file_size_mb": round(path.stat().st_size / 1e6, 2),
        }

    peer = {key: measured(path, lat[i + 1]) for i, (key, path) in enumerate(peers.items())}
    peer["stock_quantize_static"]["quantize_wall_s"] = q_time
    if labels is not None:
        from sparsify_runner.evaluate import accuracy

        peer["baseline_accuracy"] = round(accuracy(base_out, labels), 4)
    if ours.is_file():
        peer["ours_level_0.2_same_session"] = measured(ours, lat[-1])
    if use_case == "image-classification":
        peer["fp32_input_noise_floor"] = _noise_floor(model, split.holdout, base_out)
    result["peer"] = peer
    print(json.dumps({name: peer}), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", nargs="+", default=["minilm_rt", "mobilenet_v2"],
        choices=["minilm_rt", "mobilenet_v2", "resnet50", "mobilenet_mnist"],
    )
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.2, 0.5, 0.8])
    parser.add_argument(
        "--samples", type=int, default=320, help="npz samples (20%% held out, rest calibrates)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="benchmark seconds per model")
    parser.add_argument("--recipe-args", default="{}", help="JSON recipe overrides for every one-shot run")
    parser.add_argument(
        "--structures", nargs="+", default=["unstructured"], choices=["unstructured", "channels"]
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per level (same inputs, same choice?)")
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
        builders = {"mobilenet_v2": assets.build_mobilenet_v2, "resnet50": assets.build_resnet50}
        photos = None
        for name in args.models:
            overrides = json.loads(args.recipe_args)
            use_case = "image-classification"
            if name == "mobilenet_mnist":
                import mnist_assets

                model, data = mnist_assets.build_mobilenet_mnist(ROOT / ".cache" / "mnist-mobilenet")
                overrides = {**mnist_assets.recipe_args(500, 256), **overrides}
            elif name == "minilm_rt":
                import text_assets

                model, data = text_assets.build_minilm_sentiment(
                    ROOT / ".cache" / "demo-text", n_train=4000, n_val=500, n_calib=256
                )
                overrides = {**text_assets.recipe_args(500, 256), **overrides}
                use_case = "text-classification"
            else:
                photos = photos or assets.write_samples(work / "samples", args.samples)
                model, data = builders[name](work / f"{name}.onnx"), photos
            out["results"].append(
                bench_model(
                    name, model, data, args.levels, work, args.seconds, overrides,
                    tuple(args.structures), use_case, args.repeats,
                )  # fmt: skip
            )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
