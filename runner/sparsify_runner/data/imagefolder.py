"""Image-classification data in PyTorch ImageFolder layout: ``train/CLASS/img``, ``val/CLASS/img``.

Everything is validated before training starts (missing splits, empty or mismatched
class folders, unreadable images) so that bad input fails with one line and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_NAMES = ("val", "validation", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageFolderSplits:
    root: Path
    train_dir: Path
    val_dir: Path
    classes: list[str]
    train_count: int
    val_count: int
    native_size: tuple[int, int]
    """(width, height) of the first training image: picks the default input size."""


def _classes(split: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sub in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
        counts[sub.name] = sum(
            1 for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
    return counts


def inspect_imagefolder(root: Path) -> ImageFolderSplits:
    """Validate the layout and return what the loaders need; raise InputError otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise InputError(
            f"data '{root}' is not a folder; image classification expects train/CLASS/img and val/CLASS/img"
        )
    train = root / "train"
    val = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if not train.is_dir() or val is None:
        missing = "train" if not train.is_dir() else "val"
        raise InputError(
            f"data folder '{root}' has no '{missing}' subfolder; image classification expects "
            "train/CLASS/img and val/CLASS/img (ImageFolder layout)"
        )
    train_counts, val_counts = _classes(train), _classes(val)
    if not train_counts:
        raise InputError(f"'{train}' has no class subfolders; put images under train/CLASS/")
    empty = [c for c, n in train_counts.items() if n == 0]
    if empty:
        raise InputError(f"class folder '{train / empty[0]}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
    if set(train_counts) != set(val_counts):
        only_train = sorted(set(train_counts) - set(val_counts))
        only_val = sorted(set(val_counts) - set(train_counts))
        raise InputError(
            f"classes differ between '{train}' and '{val}': only in train {only_train}, only in val "
            f"{only_val}; both splits need the same class folders"
        )
    if sum(val_counts.values()) == 0:
        raise InputError(f"'{val}' has no images; put validation images under {val.name}/CLASS/")
    first = next(
        f
        for f in sorted((train / sorted(train_counts)[0]).rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    )
    try:
        with Image.open(first) as img:
            img.verify()
        with Image.open(first) as img:
            size = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"image '{first}' cannot be read ({err}); check the file") from None
    return ImageFolderSplits(
        root=root,
        train_dir=train,
        val_dir=val,
        classes=sorted(train_counts),
        train_count=sum(train_counts.values()),
        val_count=sum(val_counts.values()),
        native_size=size,
    )


def default_image_size(splits: ImageFolderSplits) -> int:
    """Native size rounded up to a multiple of 32, clamped to [32, 224]: no point
    upsampling 28-pixel digits to 224 (49x the compute), no point exceeding ImageNet size."""
    native = max(splits.native_size)
    return int(min(224, max(32, -(-native // 32) * 32)))


def build_datasets(splits: ImageFolderSplits, image_size: int, augment: bool = True):
    """torchvision ImageFolder datasets (train with light augmentation, val deterministic)."""
    from torchvision import datasets, transforms

    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    rgb = transforms.Lambda(lambda im: im.convert("RGB"))
    train_tf = [rgb, transforms.Resize((image_size, image_size))]
    if augment:
        train_tf.append(transforms.RandomAffine(degrees=8, translate=(0.05, 0.05)))
    train_tf += [transforms.ToTensor(), norm]
    val_tf = [rgb, transforms.Resize((image_size, image_size)), transforms.ToTensor(), norm]
    train = datasets.ImageFolder(str(splits.train_dir), transform=transforms.Compose(train_tf))
    val = datasets.ImageFolder(str(splits.val_dir), transform=transforms.Compose(val_tf))
    return train, val
