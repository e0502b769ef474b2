"""COCO detection data: ``annotations/instances_{train,val}.json`` (``instances_train2017.json``
and ``instances_val2017.json`` too) with the images in the first folder of
``images/{split}/``, ``{split}/``, ``images/{split}2017/``, ``{split}2017/`` that exists;
``file_name`` is relative to that folder.

Boxes are COCO ``[x, y, w, h]`` in pixels; category ids may have gaps and are mapped to
contiguous indices in sorted-id order (names from ``categories``). ``iscrowd: 1``
annotations are skipped (they mark crowds, not boxes to detect). Images without
annotations are background images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .detection import DetectionSample, check_box, image_size

SPLITS = {"train": ("train", "train2017"), "val": ("val", "val2017")}
FORMAT_HINT = "COCO instances files hold 'images', 'annotations' and 'categories' lists"


def has_coco(root: Path) -> bool:
    return (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json"))


def _find_split(root: Path, split: str) -> tuple[Path, Path]:
    """(instances json, image folder) of one split."""
    names = SPLITS[split]
    found = next(
        (
            (n, root / "annotations" / f"instances_{n}.json")
            for n in names
            if (root / "annotations" / f"instances_{n}.json").is_file()
        ),
        None,
    )
    if found is None:
        what = "no val split" if split == "val" else "no train split"
        raise InputError(
            f"data folder '{root}' has {what}: '{root / 'annotations' / f'instances_{split}.json'}' "
            f"is missing; add it (COCO layout: annotations/instances_{{train,val}}.json)"
        )
    name, path = found
    candidates = [root / "images" / name, root / name, root / "images" / split, root / split]
    folder = next((c for c in dict.fromkeys(candidates) if c.is_dir()), None)
    if folder is None:
        raise InputError(
            f"'{path}' has no image folder: none of {', '.join(str(c) for c in dict.fromkeys(candidates))} "
            "exists; put the images in images/" + split
        )
    return path, folder


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise InputError(
            f"'{path}' is not UTF-8 text (invalid byte at offset {err.start}); re-save it as UTF-8"
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"'{path}' is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); fix the file"
        ) from None
    if not isinstance(doc, dict):
        raise InputError(f"'{path}' is not a JSON object; {FORMAT_HINT}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise InputError(f"'{path}' has no '{key}' list; {FORMAT_HINT}")
    return doc


def _categories(path: Path, doc: dict[str, Any]) -> dict[int, str]:
    cats: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not cat.get("name"):
            raise InputError(f"'{path}' categories[{i}] needs an integer 'id' and a 'name'; fix the entry")
        if cat["id"] in cats:
            raise InputError(f"'{path}' category id {cat['id']} is given twice; ids must be unique")
        cats[cat["id"]] = str(cat["name"])
    if not cats:
        raise InputError(f"'{path}' has no categories, so no class names; list them under 'categories'")
    names = list(cats.values())
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(f"'{path}' category name '{dup}' is given twice; names must be unique")
    return cats


def _read_split(
    path: Path, folder: Path, doc: dict[str, Any], index: dict[int, int]
) -> list[DetectionSample]:
    images: dict[int, tuple[Path, tuple[int, int]]] = {}
    for i, img in enumerate(doc["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not img.get("file_name"):
            raise InputError(f"'{path}' images[{i}] needs an integer 'id' and a 'file_name'; fix the entry")
        if img["id"] in images:
            raise InputError(f"'{path}' image id {img['id']} is given twice; ids must be unique")
        file = folder / str(img["file_name"])
        if not file.is_file():
            raise InputError(
                f"'{path}' image id {img['id']}: '{file}' does not exist; put the image there or fix "
                "file_name (relative to the image folder)"
            )
        size = image_size(file)
        declared = (img.get("width"), img.get("height"))
        if None not in declared and tuple(declared) != size:
            raise InputError(
                f"'{path}' image id {img['id']} says {declared[0]}x{declared[1]} but '{file}' is "
                f"{size[0]}x{size[1]}; fix width/height or the image"
            )
        images[img["id"]] = (file, size)
    if not images:
        raise InputError(f"'{path}' lists no images; add the split's images under 'images'")

    boxes: dict[int, list[tuple[float, float, float, float]]] = {k: [] for k in images}
    labels: dict[int, list[int]] = {k: [] for k in images}
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(f"'{path}' annotations[{i}] is not an object; {FORMAT_HINT}")
        at = f"'{path}' annotation id {ann.get('id', '?')} (annotations[{i}])"
        if ann.get("image_id") not in images:
            raise InputError(f"{at} refers to image id {ann.get('image_id')!r}, which is not in 'images'")
        if ann.get("category_id") not in index:
            raise InputError(
                f"{at} refers to category id {ann.get('category_id')!r}, which is not in 'categories'"
            )
        if ann.get("iscrowd"):
            continue
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            raise InputError(f"{at}: bbox must be 4 numbers [x, y, width, height] in pixels, not {bbox!r}")
        width, height = images[ann["image_id"]][1]
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise InputError(f"{at}: bbox {bbox} has zero or negative width or height; fix or delete it")
        box = (x / width, y / height, (x + w) / width, (y + h) / height)
        problem = check_box(*box)
        if problem is not None:
            raise InputError(
                f"{at}: bbox {bbox} {problem} of {width}x{height} pixels; COCO boxes are "
                "[x, y, width, height] in pixels"
            )
        boxes[ann["image_id"]].append(box)
        labels[ann["image_id"]].append(index[ann["category_id"]])
    return [
        DetectionSample(
            image=file,
            boxes=np.clip(np.asarray(boxes[k], dtype=np.float32).reshape(-1, 4), 0.0, 1.0),
            labels=np.asarray(labels[k], dtype=np.int64),
            size=size,
        )
        for k, (file, size) in images.items()
    ]


def read_coco(root: Path) -> tuple[list[str], list[DetectionSample], list[DetectionSample]]:
    """(classes, train samples, val samples) of a COCO dataset; InputError on bad data."""
    train_path, train_dir = _find_split(root, "train")
    val_path, val_dir = _find_split(root, "val")
    train_doc = _load(train_path)
    cats = _categories(train_path, train_doc)
    val_doc = _load(val_path)
    if val_doc["categories"] and _categories(val_path, val_doc) != cats:
        raise InputError(
            f"categories in '{val_path}' differ from those in '{train_path}'; both splits need the same "
            "category ids and names"
        )
    index = {cid: i for i, cid in enumerate(sorted(cats))}
    classes = [cats[cid] for cid in sorted(cats)]
    train = _read_split(train_path, train_dir, train_doc, index)
    val = _read_split(val_path, val_dir, val_doc, index)
    return classes, train, val
