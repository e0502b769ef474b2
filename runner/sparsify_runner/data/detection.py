"""Object-detection data: YOLO txt labels or COCO json, validated up front.

Accepted layouts (``docs/detection.md`` has the details):

* YOLO: ``images/{train,val}/*.jpg|png`` and ``labels/{train,val}/*.txt`` (one
  ``class cx cy w h`` line per box, normalized to [0, 1]); class names from ``classes.txt``
  (one per line) or ``dataset.yaml`` / ``data.yaml`` (``names:`` as a list or an
  ``{id: name}`` mapping, optional ``path:``, ``train:``, ``val:``). Readers: ``yolo.py``.
* COCO: ``annotations/instances_{train,val}.json`` with the images under ``images/{split}/``,
  ``{split}/``, ``images/{split}2017/`` or ``{split}2017/``. Reader: ``coco.py``.

Every label line and every annotation is parsed, and every image's header is checked
(``PIL.Image.verify``) before anything trains, so bad data fails with one line that names
the file (and the line of a label file) and says how to fix it, and exit code 2.

Boxes are held as normalized ``xyxy`` float32 arrays, class indices as contiguous int64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VAL_NAMES = ("val", "valid", "validation")
# A coordinate may stray this far outside [0, 1] (float rounding in the writer)...
TOLERANCE = 1e-6
# ...and a box edge (cx - w/2 and so on: two rounded numbers) this far; edges are then clipped.
EDGE_TOLERANCE = 1e-3
LETTERBOX_FILL = 114 / 255.0

Layout = Literal["yolo", "coco"]
LAYOUTS_HINT = (
    "object detection expects a YOLO layout (images/{train,val}/, labels/{train,val}/*.txt and "
    "classes.txt or dataset.yaml) or a COCO layout (annotations/instances_{train,val}.json with "
    "images under images/{train,val}/); see docs/detection.md"
)


@dataclass
class DetectionSample:
    image: Path
    boxes: np.ndarray
    """(n, 4) float32, normalized ``x1, y1, x2, y2`` in [0, 1]."""
    labels: np.ndarray
    """(n,) int64 indices into ``DetectionSplits.classes``."""
    size: tuple[int, int]
    """(width, height) of the image file in pixels."""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)


@dataclass
class DetectionSplits:
    root: Path
    layout: Layout
    classes: list[str]
    train: list[DetectionSample] = field(default_factory=list)
    val: list[DetectionSample] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images and boxes per split (for the report and log lines)."""
        return {
            "train_images": len(self.train),
            "train_boxes": int(sum(len(s.labels) for s in self.train)),
            "val_images": len(self.val),
            "val_boxes": int(sum(len(s.labels) for s in self.val)),
        }


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image after ``PIL.Image.verify``; InputError if it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        reason = " ".join(str(err).split()) or type(err).__name__
        raise InputError(f"image '{path}' cannot be decoded ({reason}); replace or delete the file") from None
    if size[0] <= 0 or size[1] <= 0:
        raise InputError(f"image '{path}' has no pixels ({size[0]}x{size[1]}); replace or delete the file")
    return int(size[0]), int(size[1])


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, hidden files skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def check_box(x1: float, y1: float, x2: float, y2: float) -> str | None:
    """None for a valid normalized xyxy box, else what is wrong with it."""
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return "has zero or negative width or height"
    low, high = -EDGE_TOLERANCE, 1 + EDGE_TOLERANCE
    if min(x1, y1) < low or max(x2, y2) > high:
        return f"reaches outside the image (x1 y1 x2 y2 = {x1:.6g} {y1:.6g} {x2:.6g} {y2:.6g})"
    return None


def detect_layout(root: Path) -> Layout:
    """``yolo`` if the folder has classes.txt / dataset.yaml / images+labels, ``coco`` if it
    has annotations/instances_*.json; YOLO wins when both are present."""
    from .coco import has_coco
    from .yolo import has_yolo

    if not root.is_dir():
        raise InputError(f"data '{root}' is not a folder; {LAYOUTS_HINT}")
    if has_yolo(root):
        return "yolo"
    if has_coco(root):
        return "coco"
    raise InputError(f"data folder '{root}' has neither layout; {LAYOUTS_HINT}")


def inspect_detection(root: Path, layout: Layout | None = None) -> DetectionSplits:
    """Detect the layout (or use ``layout``), read and validate both splits, return them.

    Raises InputError (one line: the file, the line, how to fix it) on any bad input.
    """
    root = Path(root)
    if layout is None:
        layout = detect_layout(root)
    elif not root.is_dir():
        raise InputError(f"data '{root}' is not a folder; {LAYOUTS_HINT}")
    if layout == "yolo":
        from .yolo import read_yolo

        classes, train, val = read_yolo(root)
    elif layout == "coco":
        from .coco import read_coco

        classes, train, val = read_coco(root)
    else:
        raise InputError(f"unknown detection layout '{layout}'; use 'yolo' or 'coco'")
    return DetectionSplits(root=root, layout=layout, classes=classes, train=train, val=val)


def load_image(sample: DetectionSample, size: int, letterbox: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The image as a ``(3, size, size)`` float32 array in [0, 1] and its boxes in pixels
    of that array (``(n, 4)`` float32 xyxy).

    Default: a plain resize to ``size x size`` (the aspect ratio is not kept; boxes are the
    normalized boxes times ``size``). ``letterbox=True`` keeps the aspect ratio: the longer
    side becomes ``size`` and the rest is padded evenly with gray (114/255).
    """
    from PIL import Image

    with Image.open(sample.image) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    if not letterbox:
        resized = rgb.resize((size, size), Image.BILINEAR)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        boxes = sample.boxes * np.float32(size)
        return np.ascontiguousarray(array.transpose(2, 0, 1)), boxes.astype(np.float32)
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.float32)
    resized = rgb.resize((new_w, new_h), Image.BILINEAR)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(resized, dtype=np.float32) / 255.0
    boxes = sample.boxes * np.array([new_w, new_h, new_w, new_h], dtype=np.float32)
    boxes += np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), boxes.astype(np.float32)
