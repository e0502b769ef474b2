#!/usr/bin/env python3
"""``make gpu-check``: the GPU paths end to end, on whatever GPUs this machine has.

1. training-aware on CUDA with AMP on one GPU: the command the operator's Job runs for
   ``gpus: 1`` (``sparsify-runner run ...``; the Trainer autocasts to bfloat16 where the GPU
   supports it, else float16 with a GradScaler), ``deploy.device: cuda``;
2. the same on all GPUs: the command the Job runs for ``gpus: N`` (``torchrun --standalone
   --nproc-per-node N -m sparsify_runner.cli run ...``, DistributedDataParallel over NCCL);
3. onnxruntime timings of the result on CPUExecutionProvider, CUDAExecutionProvider (through
   the runner's own benchmark, as ``--deploy-device cuda`` measures) and TensorrtExecutionProvider
   when this onnxruntime build has them.

Prints one JSON document; exit status 1 when a run or a timing that should work failed.
Without a CUDA GPU it prints one line saying so and exits 0. The commands come from the
operator's own renderer (``jobs.build_job``), with the experiment swapped for a local file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RUN_TIMEOUT_S = 1200
CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
IMAGE_SIZE = 64
TRAIN_PER_CLASS, VAL_PER_CLASS = 96, 24
BATCH_SIZE = 32  # per process
BENCH_BATCHES = (1, 32)
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_gpus() -> tuple[int, str | None]:
    """(number of CUDA GPUs, why none)."""
    try:
        import torch
    except ImportError:
        return 0, "torch is not installed"
    if not torch.cuda.is_available():
        return 0, "torch.cuda.is_available() is False"
    return torch.cuda.device_count(), None


def amp_dtype() -> str:
    """The autocast dtype the Trainer picks on this GPU (training/loop.py)."""
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16 (GradScaler)"


# ---- inputs ------------------------------------------------------------------------------------


def make_data(root: Path) -> Path:
    from PIL import Image

    rng = random.Random(0)
    for split, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for cls, base in CLASSES.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
                img.putdata(
                    [
                        tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in base)
                        for _ in range(IMAGE_SIZE * IMAGE_SIZE)
                    ]
                )
                img.save(folder / f"{i}.png")
    return root


def make_checkpoint(path: Path) -> Path:
    import torch
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(0)
    model = EXTRA_ARCHS["simple_cnn_wide"](num_classes=len(CLASSES))
    torch.save({"state_dict": model.state_dict(), "arch_key": "simple_cnn_wide"}, path)
    return path


def experiment(model: str, data: str, output: str) -> dict[str, Any]:
    return {
        "type": "training-aware",
        "useCase": "image-classification",
        "model": model,
        "data": data,
        "optimLevel": 0.5,
        "trainKwargs": {"epochs": 4, "batch_size": BATCH_SIZE},
        "deploy": {"device": "cuda"},
        "output": output,
    }


# ---- the operator's commands ---------------------------------------------------------------------


def rendered_command(gpus: int) -> list[str]:
    """The runner container's command line for ``spec.gpus``, as the operator renders it."""
    from sparsify_operator.jobs import build_job
    from sparsify_operator.settings import OperatorSettings

    cr = {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifyExperiment",
        "metadata": {"name": "gpu-check", "namespace": "default"},
        "spec": {"experiment": experiment("s3://m/model.pt", "s3://d/images/", "s3://o/run"), "gpus": gpus},
    }
    container = build_job(cr, OperatorSettings())["spec"]["template"]["spec"]["containers"][0]
    return [*container.get("command", ["sparsify-runner"]), *container["args"]]


def local_command(command: list[str], spec: Path) -> list[str]:
    """``command`` with its executable from this interpreter's environment and the inline
    experiment replaced by a local experiment file."""
    exe = Path(sys.executable).parent / command[0]
    i = command.index("--experiment") + 1
    return [str(exe) if exe.exists() else command[0], *command[1:i], str(spec), *command[i + 1 :]]


def summarize(out: Path, wall_s: float) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    steps = [e for e in report.get("training") or [] if e.get("phase") == "main"]
    return {
        "wall_s": round(wall_s, 1),
        "main_phase_steps": steps[-1]["step"] if steps else None,
        "baseline_accuracy": (report.get("baseline") or {}).get("accuracy"),
        "optimized_accuracy": (report.get("optimized") or {}).get("accuracy"),
        "sparsity": (report.get("settings") or {}).get("torch_sparsity"),
        "speedup": report.get("speedup"),
    }


def train(work: Path, name: str, gpus: int, visible: str) -> dict[str, Any]:
    out = work / name
    spec = work / f"{name}.json"
    spec.write_text(json.dumps(experiment(str(work / "model.pt"), str(work / "data"), str(out))))
    cmd = local_command(rendered_command(gpus), spec)
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": visible,
        "SPARSIFY_NO_PROGRESS": "1",
        "SPARSIFY_TERMINATION_LOG": str(work / f"{name}.termination.json"),
    }
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    result: dict[str, Any] = {"command": " ".join(cmd[: cmd.index("--experiment")]), "gpus": gpus}
    if proc.returncode != 0:
        return {**result, "ok": False, "exit_code": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    return {**result, "ok": True, "amp": amp_dtype(), **summarize(out, time.perf_counter() - start)}


# ---- onnxruntime ---------------------------------------------------------------------------------------


def _feeds(session, batch: int) -> dict[str, Any]:
    import numpy as np

    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in inp.shape]
        shape[0] = batch
        feeds[inp.name] = (
            np.random.default_rng(0).standard_normal(shape).astype(types.get(inp.type, np.float32))
        )
    return feeds


def time_provider(
    model: Path, provider: str, batch: int, *, iterations: int = 200, cache: Path | None = None
):
    """Median/p90 latency (ms) of ``model`` on ``provider`` with a plain session, or why not.
    TensorRT: FP16 allowed (the QDQ nodes keep INT8 where the model has them), engines cached."""
    import numpy as np
    import onnxruntime as ort

    options: dict[str, Any] = {}
    if provider == TENSORRT:
        options = {"trt_fp16_enable": True, "trt_engine_cache_enable": True}
        if cache is not None:
            options["trt_engine_cache_path"] = str(cache)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    chain = [(provider, options)] + ([CPU] if provider != CPU else [])
    session = ort.InferenceSession(str(model), sess_options=opts, providers=chain)
    if session.get_providers()[0] != provider:
        return {
            "ok": False,
            "error": f"{provider} did not load (onnxruntime fell back to {session.get_providers()})",
        }
    feeds = _feeds(session, batch)
    for _ in range(20):  # warm-up (TensorRT builds its engine on the first run)
        session.run(None, feeds)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "ok": True,
        "batch_size": batch,
        "median_ms": round(float(np.median(times)), 4),
        "p90_ms": round(float(np.percentile(times, 90)), 4),
        "items_per_s": round(batch * 1000 / float(np.median(times)), 1),
    }


def benchmark(model: Path, work: Path) -> dict[str, Any]:
    import onnxruntime as ort
    from sparsify_runner.benchmark import measure_latency

    available = ort.get_available_providers()
    out: dict[str, Any] = {"onnxruntime": ort.__version__, "available_providers": available}
    for batch in BENCH_BATCHES:
        row: dict[str, Any] = {"CPUExecutionProvider": time_provider(model, CPU, batch, iterations=50)}
        if CUDA in available:
            # the runner's own measurement, as an experiment with deploy.device cuda runs it
            [stats] = measure_latency([model], batch_size=batch, device="cuda", seconds=3.0)
            row[CUDA] = {
                "ok": stats.provider == CUDA,
                "provider": stats.provider,
                "median_ms": round(stats.median_ms, 4),
                "items_per_s": round(stats.throughput_items_per_s, 1),
            }
        else:
            row[CUDA] = {"skipped": "this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu has)"}
        if TENSORRT in available:
            row[TENSORRT] = time_provider(model, TENSORRT, batch, cache=work / "trt-cache")
        else:
            row[TENSORRT] = {"skipped": "this onnxruntime has no TensorrtExecutionProvider"}
        out[f"batch_{batch}"] = row
    return out


def failures(result: dict[str, Any]) -> list[str]:
    """What should have worked and did not (a skipped provider is not a failure)."""
    bad = [name for name, run in result["training"].items() if not run.get("skipped") and not run.get("ok")]
    for batch, row in (result.get("onnxruntime") or {}).items():
        if batch.startswith("batch_"):
            bad += [f"{batch}/{p}" for p, r in row.items() if not r.get("skipped") and not r.get("ok")]
    return bad


def main() -> int:
    gpus, why = cuda_gpus()
    if not gpus:
        print(f"gpu-check: skipped, no CUDA GPU here ({why})")
        return 0
    import torch

    result: dict[str, Any] = {
        "gpus": gpus,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "training": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        make_data(work / "data")
        make_checkpoint(work / "model.pt")
        result["training"]["one_gpu"] = train(work, "one-gpu", 1, "0")
        if gpus > 1:
            visible = ",".join(str(i) for i in range(gpus))
            result["training"]["all_gpus"] = train(work, "all-gpus", gpus, visible)
        else:
            result["training"]["all_gpus"] = {"skipped": "one GPU: torchrun across GPUs needs two or more"}
        onnx = work / "one-gpu" / "model.onnx"
        if onnx.is_file():
            result["onnxruntime"] = benchmark(onnx, work)
        shutil.rmtree(work / "data", ignore_errors=True)
    bad = failures(result)
    result["ok"] = not bad
    if bad:
        result["failed"] = bad
    print(json.dumps(result, indent=2))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
