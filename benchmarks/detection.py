"""Object-detection benchmark (training-aware pathway): prints one JSON document.

What it measures, per detector in ``--models`` (default ``yolov8n`` and
``ssdlite320_mobilenet_v3_large``):

1. A synthetic YOLO dataset, built offline and cached under ``--workdir``: real MNIST digits
   pasted onto crops of real photos (``examples/detection_assets.py``), 5 classes,
   160 px images (ssdlite resizes them to its native 320).
2. A base detector trained from random init with ``train_base_detector`` (no pretrained
   detection weights are available offline), ``--base-steps`` AdamW steps; its mAP is
   reported (PyTorch and onnxruntime) and it is exported once to ONNX (``images`` ->
   ``boxes``, ``scores``, dynamic batch) as the FP32 reference for the speed comparisons.
3. Training-aware runs from that checkpoint for each optim level in ``--levels`` and each
   structure in ``--structures`` (levels below 0.3 are INT8-only whatever the structure,
   so they run once), each through ``run_experiment`` (the CLI's code path), with
   ``--epochs`` epochs and short benchmark / INT8-search windows. Recorded per run: mode,
   mAP@0.5:0.95 and mAP@0.5 baseline vs optimized (the report's onnxruntime evaluation),
   the drop in points, the INT8 method, sparsity, MACs, file sizes, the report's speedup,
   wall time.
4. Speed in this process: each run's ``model.onnx`` against the base FP32 export, batch 1
   and batch 8 on onnxruntime CPU, the two models alternating
   (``sparsify_runner.benchmark.measure_latency``); speedup = base mean / optimized mean.
5. ``targets``: channels at optim 0.5 >= 2x at <= 1.5 points mAP loss; INT8 alone
   (optim 0.2) >= 1.5x at <= 1 point; no optimized model that detects nothing
   (optimized mAP50 > 0). "Points" are mAP@0.5:0.95 x 100.

Progress lines go to stderr, and the document so far is rewritten to
``WORKDIR/partial.json`` after every run.

    OMP_NUM_THREADS=2 python benchmarks/detection.py --quick > detection-quick.json
    OMP_NUM_THREADS=2 python benchmarks/detection.py --models yolov8n --levels 0 0.2 0.5 \\
        --epochs 2 > detection.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

DEFAULT_MODELS = ["yolov8n", "ssdlite320_mobilenet_v3_large"]
# base-detector steps per architecture (batch 16), sized for a 2-core CPU
DEFAULT_BASE_STEPS = {"yolov8-pico": 200, "yolov8n": 200, "yolov8s": 200}
DEFAULT_BASE_STEPS_OTHER = 150
NUM_CLASSES = 5



def _batch_speedups(result: dict) -> dict:
    by_batch = result["speedup_vs_base_by_batch_size"].items()
    return {k: v.get("speedup") for k, v in by_batch if isinstance(v, dict)}

def log(msg: str) -> None:
    print(f"[detection-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info(threads: int) -> dict:
    import onnxruntime
    import torch

    cpu, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if cpu is None and line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if not flags and line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu_model": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx512f": "avx512f" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": threads,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ---- data and base detector ----------------------------------------------------------------
def dataset(work: Path, n_train: int, n_val: int, size: int, seed: int = 0) -> Path:
    from detection_assets import build_detection_dataset

    root = work / f"data-{n_train}-{n_val}-{size}px-{NUM_CLASSES}cls-seed{seed}"
    done = root / ".complete"
    if not done.exists():
        log(f"building the synthetic dataset {root.name}")
        build_detection_dataset(root, n_train, n_val, size, NUM_CLASSES, seed, "yolo")
        done.write_text("ok\n")
    return root


def image_size_for(arch: str, yolo_size: int) -> int:
    from sparsify_runner.models.detection import native_size

    return native_size(arch) or yolo_size


def load_base(ckpt: Path):
    import torch
    from sparsify_runner.models.detection import build_detector

    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = build_detector(payload["arch_key"], len(payload["classes"]), payload["image_size"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def base_detector(
    work: Path, data: Path, arch: str, image_size: int, steps: int, batch_size: int, lr: float
) -> dict:
    """Train (or reuse) the base checkpoint, export it to ONNX, evaluate it."""
    import torch
    from detection_assets import train_base_detector
    from sparsify_runner.data.detection import inspect_detection
    from sparsify_runner.training.detection_task import detection_task
    from sparsify_runner.training.export import export_onnx

    tag = f"{arch}-{image_size}px-{steps}steps-bs{batch_size}-lr{lr:g}-{data.name}"
    ckpt = work / "base" / tag / "model.pt"
    onnx_path = ckpt.parent / "base.onnx"
    info: dict = {"checkpoint": str(ckpt), "image_size": image_size, "steps": steps,
                  "batch_size": batch_size, "lr": lr}
    meta = ckpt.parent / "meta.json"
    if ckpt.exists() and meta.exists():
        info.update(json.loads(meta.read_text()))
        info["cached"] = True
        log(f"reusing base {tag}")
    else:
        log(f"training base {arch} for {steps} steps at {image_size}px")
        started = time.perf_counter()
        train_base_detector(
            data, ckpt, arch=arch, image_size=image_size, steps=steps, batch_size=batch_size, lr=lr
        )
        info["train_wall_s"] = round(time.perf_counter() - started, 1)
        splits = inspect_detection(data)
        task = detection_task(splits, image_size)
        model = load_base(ckpt)
        started = time.perf_counter()
        torch_metrics = task.evaluate(model, torch.device("cpu"), 32)
        export_onnx(task, model, onnx_path)
        samples, targets = task.numpy_samples(task.val)
        onnx_metrics = task.onnx_metrics(onnx_path, samples, targets, batch_size=32)
        info["eval_wall_s"] = round(time.perf_counter() - started, 1)
        info["torch_map"] = round(float(torch_metrics["map"]), 5)
        info["torch_map50"] = round(float(torch_metrics["map50"]), 5)
        info["onnx_map"] = round(float(onnx_metrics["map"]), 5)
        info["onnx_map50"] = round(float(onnx_metrics["map50"]), 5)
        info["parameters"] = int(sum(p.numel() for p in model.parameters()))
        info["onnx_size_bytes"] = onnx_path.stat().st_size
        meta.write_text(json.dumps({k: v for k, v in info.items() if k != "cached"}))
        info["cached"] = False
    info["onnx"] = str(onnx_path)
    log(f"base {arch}: mAP {info.get('onnx_map')} mAP50 {info.get('onnx_map50')} (onnxruntime)")
    return info


# ---- training-aware runs -------------------------------------------------------------------
def run(spec: dict) -> tuple[dict, float]:
    from sparsify_runner.run import run_experiment
    from sparsify_runner.spec import parse_experiment

    started = time.perf_counter()
    report = run_experiment(parse_experiment(spec), show_progress=False, termination_log="")
    return report.model_dump(mode="json"), time.perf_counter() - started


def points(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return round(100 * (before - after), 2)


def summarize(name: str, level: float, structure: str, report: dict, wall: float) -> dict:
    b, o, s = report["baseline"], report["optimized"], report["settings"]
    macs_b, macs_o = b.get("flops"), o.get("flops")
    return {
        "run": name,
        "optim_level": level,
        "structure": structure,
        "mode": report["mode"],
        "wall_s": round(wall, 1),
        "baseline_map": b.get("map"),
        "optimized_map": o.get("map"),
        "map_drop_points": points(b.get("map"), o.get("map")),
        "baseline_map50": b.get("map50"),
        "optimized_map50": o.get("map50"),
        "map50_drop_points": points(b.get("map50"), o.get("map50")),
        "int8_method": s.get("int8_method"),
        "int8_source": s.get("int8_source"),
        "torch_sparsity": s.get("torch_sparsity"),
        "optimized_sparsity": o.get("sparsity"),
        "target_sparsity": s.get("target_sparsity"),
        "target_macs_reduction": s.get("target_macs_reduction"),
        "baseline_macs": macs_b,
        "optimized_macs": macs_o,
        "macs_ratio": round(macs_o / macs_b, 4) if macs_b and macs_o else None,
        "baseline_size_bytes": b["file_size_bytes"],
        "optimized_size_bytes": o["file_size_bytes"],
        "size_ratio": report.get("size_ratio"),
        "compressed_size_ratio": report.get("compressed_size_ratio"),
        "report_speedup": report.get("speedup"),
        "report_baseline_latency_ms": (b.get("latency") or {}).get("mean_ms"),
        "report_optimized_latency_ms": (o.get("latency") or {}).get("mean_ms"),
        "speedup_source": report.get("speedup_source"),
        "fidelity": report.get("fidelity"),
        "int8_candidates": [
            {k: c.get(k) for k in ("name", "chosen", "speedup", "accuracy", "note")}
            for c in report.get("candidates", [])
        ],
        "epochs": [
            {
                "phase": e["phase"],
                "epoch": e["epoch"],
                "loss": round(e["train_loss"], 4),
                "val_map": e.get("val_map"),
                "val_map50": e.get("val_map50"),
                "sparsity": e.get("sparsity"),
            }
            for e in report.get("training", [])
        ],
        "timings_s": report.get("timings_s"),
        "notes": report.get("notes"),
    }


def side_by_side(base_onnx: Path, optimized: Path, seconds: float, sizes=(1, 8)) -> dict:
    """Base FP32 export vs the run's model.onnx, alternating in this process."""
    from sparsify_runner.benchmark import measure_latency

    out = {}
    for n in sizes:
        base, opt = measure_latency([base_onnx, optimized], batch_size=n, seconds=seconds)
        out[str(n)] = {
            "base_mean_ms": round(base.mean_ms, 3),
            "optimized_mean_ms": round(opt.mean_ms, 3),
            "base_iterations": base.iterations,
            "optimized_iterations": opt.iterations,
            "speedup": round(base.mean_ms / opt.mean_ms, 3),
        }
    return out


def plan(levels: list[float], structures: list[str]) -> list[tuple[float, str]]:
    runs: list[tuple[float, str]] = []
    for level in levels:
        if level < 0.3:
            runs.append((level, structures[0] if structures else "unstructured"))
        else:
            runs += [(level, s) for s in structures]
    return runs


def bench_model(arch: str, args, work: Path, data: Path, out: dict, save) -> None:
    image_size = image_size_for(arch, args.image_size)
    steps = args.base_steps or DEFAULT_BASE_STEPS.get(arch, DEFAULT_BASE_STEPS_OTHER)
    entry: dict = {"arch": arch, "image_size": image_size, "runs": []}
    out["models"].append(entry)
    try:
        base = base_detector(work, data, arch, image_size, steps, args.base_batch_size, args.base_lr)
    except Exception as err:  # noqa: BLE001 - a benchmark reports the failure and goes on
        import traceback

        entry["error"] = f"base detector: {type(err).__name__}: {err}"
        entry["traceback"] = traceback.format_exc()
        log(entry["error"])
        save()
        return
    entry["base"] = base
    save()
    train_kwargs = {"epochs": args.epochs, "batch_size": args.batch_size}
    if args.lr:
        train_kwargs["lr"] = args.lr
    for level, structure in plan(args.levels, args.structures):
        name = f"{arch}: training-aware {structure if level >= 0.3 else 'int8-only'} optim {level}"
        if level == 0:
            name = f"{arch}: training-aware optim 0 (baseline)"
        base_tag = Path(base["checkpoint"]).parent.name
        run_out = work / "runs" / f"{arch}-{level}-{structure}-{args.epochs}ep-{base_tag}"
        spec = {
            "type": "training-aware",
            "useCase": "object-detection",
            "model": base["checkpoint"],
            "data": str(data),
            "output": str(run_out),
            "optimLevel": level,
            "structure": structure,
            "trainKwargs": train_kwargs,
            "recipeArgs": {
                "benchmark_seconds": args.seconds,
                "int8_search_seconds": args.int8_search_seconds,
                "int8_candidate_seconds": min(1.5, args.seconds),
            },
            "deploy": {"batchSize": 1},
        }
        log(f"run {name}")
        try:
            report, wall = run(spec)
        except Exception as err:  # noqa: BLE001
            import traceback

            entry["runs"].append(
                {"run": name, "optim_level": level, "structure": structure,
                 "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            )
            log(f"run failed: {err}")
            save()
            continue
        result = summarize(name, level, structure, report, wall)
        try:
            result["speedup_vs_base_by_batch_size"] = side_by_side(
                Path(base["onnx"]), run_out / "model.onnx", args.seconds
            )
        except Exception as err:  # noqa: BLE001
            result["speedup_vs_base_by_batch_size"] = {"error": f"{type(err).__name__}: {err}"}
        entry["runs"].append(result)
        log(
            f"done {name}: mAP {result['baseline_map']} -> {result['optimized_map']} "
            f"speedup(report) {result['report_speedup']} by batch "
            f"{_batch_speedups(result)} "
            f"in {result['wall_s']}s"
        )
        save()


# ---- targets -------------------------------------------------------------------------------
def _target(runs: list[dict], goal: str, min_speedup: float, max_drop: float) -> dict:
    if not runs:
        return {"goal": goal, "met": None, "why": "not run in this configuration"}
    best = runs[0]
    by_batch = best.get("speedup_vs_base_by_batch_size") or {}
    drop = best.get("map_drop_points")
    checks = {}
    for size in ("1", "8"):
        speed = (by_batch.get(size) or {}).get("speedup")
        checks[f"batch_{size}"] = {
            "speedup": speed,
            "speedup_met": speed is not None and speed >= min_speedup,
        }
    accuracy_met = drop is not None and drop <= max_drop
    return {
        "goal": goal,
        "run": best["run"],
        "map_drop_points": drop,
        "map50_drop_points": best.get("map50_drop_points"),
        "accuracy_met": accuracy_met,
        "report_speedup": best.get("report_speedup"),
        "by_batch_size": checks,
        "met_at_batch_1": accuracy_met and checks["batch_1"]["speedup_met"],
        "met_at_batch_8": accuracy_met and checks["batch_8"]["speedup_met"],
    }


def targets(models: list[dict]) -> dict:
    result: dict = {}
    for entry in models:
        runs = [r for r in entry["runs"] if "error" not in r]
        t = {
            "channels_0.5": _target(
                [r for r in runs if r["optim_level"] == 0.5 and r["mode"] == "channels"],
                ">= 2x onnxruntime CPU speedup at <= 1.5 points mAP@0.5:0.95 loss (channels, optim 0.5)",
                2.0,
                1.5,
            ),
            "int8_0.2": _target(
                [r for r in runs if r["optim_level"] == 0.2 and r["mode"] == "quantization-only"],
                ">= 1.5x onnxruntime CPU speedup at <= 1 point mAP@0.5:0.95 loss (INT8 only, optim 0.2)",
                1.5,
                1.0,
            ),
        }
        empty = [r["run"] for r in runs if not (r.get("optimized_map50") or 0) > 0]
        t["never_detects_nothing"] = {
            "goal": "every optimized model has mAP50 > 0",
            "met": bool(runs) and not empty,
            "min_optimized_map50": min((r.get("optimized_map50") or 0 for r in runs), default=None),
            "runs_with_map50_0": empty,
        }
        result[entry["arch"]] = t
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--levels", nargs="+", type=float, default=None, help="default: 0 0.2 0.5 0.8")
    parser.add_argument("--structures", nargs="+", default=["unstructured", "channels"],
                        choices=["unstructured", "channels"])
    parser.add_argument("--epochs", type=int, default=None, help="training-aware epochs (default 3)")
    parser.add_argument("--base-steps", type=int, default=None,
                        help=f"base-detector steps (default per arch: {DEFAULT_BASE_STEPS}, else "
                        f"{DEFAULT_BASE_STEPS_OTHER})")
    parser.add_argument("--base-batch-size", type=int, default=16)
    parser.add_argument("--base-lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=16, help="training-aware batch size")
    parser.add_argument("--lr", type=float, default=0.0, help="training-aware lr (0: the product's default)")
    parser.add_argument("--train", type=int, default=None, help="training images (default 400)")
    parser.add_argument("--val", type=int, default=None, help="validation images (default 100)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="YOLO input size = dataset image size (default 160); ssdlite uses 320")
    parser.add_argument("--seconds", type=float, default=None, help="benchmark seconds per model (default 3)")
    parser.add_argument("--int8-search-seconds", type=float, default=None, help="default 20")
    parser.add_argument("--workdir", type=Path, default=Path(".cache/bench-detection"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny: small data at 96 px, yolov8-pico, levels 0.2 0.5, 1 epoch")
    args = parser.parse_args()
    q = args.quick
    args.models = args.models or (["yolov8-pico"] if q else DEFAULT_MODELS)
    args.levels = args.levels if args.levels is not None else ([0.2, 0.5] if q else [0.0, 0.2, 0.5, 0.8])
    args.epochs = args.epochs or (1 if q else 3)
    args.train = args.train or (160 if q else 400)
    args.val = args.val or (40 if q else 100)
    args.image_size = args.image_size or (96 if q else 160)
    args.base_steps = args.base_steps or (80 if q else None)
    args.seconds = args.seconds or (1.0 if q else 3.0)
    args.int8_search_seconds = args.int8_search_seconds or (8.0 if q else 20.0)

    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    out: dict = {
        "benchmark": "object-detection training-aware",
        "machine": machine_info(threads),
        "choices": {
            "quick": q,
            "models": args.models,
            "levels": args.levels,
            "structures": args.structures,
            "runs_per_model": [
                f"{lvl} {s if lvl >= 0.3 else 'int8-only'}" for lvl, s in plan(args.levels, args.structures)
            ],
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr or "product default (1e-3, AdamW)",
            "base_steps": args.base_steps or DEFAULT_BASE_STEPS,
            "base_batch_size": args.base_batch_size,
            "base_lr": args.base_lr,
            "train_images": args.train,
            "val_images": args.val,
            "dataset_image_size": args.image_size,
            "classes": NUM_CLASSES,
            "benchmark_seconds": args.seconds,
            "int8_search_seconds": args.int8_search_seconds,
            "deploy_batch_size": 1,
            "workdir": str(work),
        },
        "notes": [
            "No pretrained detection weights exist offline: every base detector (the YOLOv8-style "
            "models and the torchvision ssdlite, whose backbone is also randomly initialized) is trained "
            "from random init on the synthetic data for --base-steps steps, so absolute mAP is that of "
            "a short from-scratch training, not of a COCO-pretrained model.",
            "Data: synthetic MNIST digits pasted on skimage photos (examples/detection_assets.py), "
            "YOLO layout, 5 classes; ssdlite resizes the images to its native 320 px.",
            "baseline_map / optimized_map come from each run's report (onnxruntime evaluation on the val "
            "split); drops are in points of mAP (x100).",
            "speedup_vs_base_by_batch_size: the base checkpoint's own FP32 ONNX export vs the run's "
            "model.onnx, alternating in this process (measure_latency); report_speedup is the run's own "
            "batch-1 measurement against its baseline.",
        ],
        "models": [],
    }

    def save() -> None:
        if "total_wall_s" not in out:
            out["wall_s_so_far"] = round(time.perf_counter() - started, 1)
        (work / "partial.json").write_text(json.dumps(out, indent=2))

    data = dataset(work, args.train, args.val, args.image_size)
    out["choices"]["data"] = str(data)
    for arch in args.models:
        bench_model(arch, args, work, data, out, save)
    out["targets"] = targets(out["models"])
    out.pop("wall_s_so_far", None)
    out["total_wall_s"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
