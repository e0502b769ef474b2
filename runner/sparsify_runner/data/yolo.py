"""YOLO detection data: ``images/{train,val}``, ``labels/{train,val}/*.txt``, class names from
``classes.txt`` or ``dataset.yaml`` (``data.yaml`` is accepted too).

``dataset.yaml`` follows Ultralytics: ``names:`` (a list, or an ``{id: name}`` mapping with
ids 0..n-1), optional ``nc:``, ``path:`` (relative to the yaml's folder) and ``train:`` /
``val:`` (an image folder, or a list of them, relative to ``path:``; default
``images/train`` and ``images/val``). An image's label file is found by the YOLO rule:
the last ``images`` component of its path becomes ``labels`` and the extension ``.txt``.
An image without a label file, or with an empty one, is a background image (no boxes).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .detection import (
    IMAGE_EXTENSIONS,
    TOLERANCE,
    VAL_NAMES,
    DetectionSample,
    check_box,
    image_size,
    list_images,
)

YAML_NAMES = ("dataset.yaml", "data.yaml")
CLASSES_FILE = "classes.txt"
LINE_HINT = "one 'class cx cy w h' line per box, normalized to [0, 1]"


def has_yolo(root: Path) -> bool:
    if any((root / n).is_file() for n in (*YAML_NAMES, CLASSES_FILE)):
        return True
    return (root / "images").is_dir() and (root / "labels").is_dir()


def label_path(image: Path) -> Path:
    """The YOLO rule: the last ``images`` path component becomes ``labels``, suffix ``.txt``."""
    parts = image.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
    return image.with_suffix(".txt")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"'{path}' is not UTF-8 text (invalid byte at offset {err.start}); re-save it as UTF-8"
        ) from None


def _check_unique(names: list[str], where: str) -> list[str]:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise InputError(
                f"{where}: class name '{name}' is given twice (ids {seen[name]} and {i}); "
                "names must be unique"
            )
        seen[name] = i
    return names


def read_classes_txt(path: Path) -> list[str]:
    lines = [line.strip() for line in _read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise InputError(f"'{path}' has no class names; write one class name per line")
    for n, name in enumerate(lines, start=1):
        if not name:
            raise InputError(f"'{path}' line {n} is empty; write one class name per line, no blank lines")
    return _check_unique(lines, f"'{path}'")


def _names_from_yaml(path: Path, names: Any) -> list[str]:
    if isinstance(names, list):
        out = [str(n).strip() for n in names]
        if not out:
            raise InputError(f"'{path}' has an empty 'names:' list; list the class names")
        if any(not n for n in out):
            raise InputError(f"'{path}' 'names:' has an empty class name at id {out.index('')}")
        return _check_unique(out, f"'{path}'")
    if isinstance(names, dict):
        if not names:
            raise InputError(f"'{path}' has an empty 'names:' mapping; map ids 0..n-1 to class names")
        by_id: dict[int, str] = {}
        for key, value in names.items():
            try:
                by_id[int(key)] = str(value).strip()
            except (TypeError, ValueError):
                raise InputError(
                    f"'{path}' 'names:' key '{key}' is not an integer id; map ids 0..n-1 to class names"
                ) from None
        missing = sorted(set(range(len(by_id))) - set(by_id))
        if missing:
            raise InputError(
                f"'{path}' 'names:' ids must be 0..{len(by_id) - 1} without gaps, but {missing[0]} is "
                f"missing (ids: {sorted(by_id)}); renumber the classes"
            )
        out = [by_id[i] for i in range(len(by_id))]
        if any(not n for n in out):
            raise InputError(f"'{path}' 'names:' has an empty class name at id {out.index('')}")
        return _check_unique(out, f"'{path}'")
    raise InputError(
        f"'{path}' 'names:' must be a list of class names or an {{id: name}} mapping, "
        f"not {type(names).__name__}"
    )


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"'{path}' is not valid YAML{where}; fix the syntax") from None
    if not isinstance(doc, dict):
        raise InputError(f"'{path}' must be a YAML mapping with 'names:' (and optional path/train/val)")
    return doc


def _split_dirs(yaml_path: Path, base: Path, key: str, value: Any) -> list[Path]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"'{yaml_path}' '{key}:' is an empty list; point it at an image folder")
    dirs = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise InputError(f"'{yaml_path}' '{key}:' must be a folder path (or a list of them), not {v!r}")
        p = Path(v.strip())
        p = p if p.is_absolute() else base / p
        if p.is_file():
            raise InputError(
                f"'{yaml_path}' '{key}: {v}' is a file; image lists are not supported, "
                "point it at a folder of images"
            )
        if not p.is_dir():
            raise InputError(
                f"'{yaml_path}' '{key}: {v}' resolves to '{p}', which is not a folder; "
                "paths are relative to 'path:' (itself relative to the yaml's folder)"
            )
        dirs.append(p)
    return dirs


def _layout(root: Path) -> tuple[list[str], list[Path], list[Path]]:
    """(classes, train image folders, val image folders)."""
    yaml_path = next((root / n for n in YAML_NAMES if (root / n).is_file()), None)
    classes_txt = root / CLASSES_FILE
    base = root
    doc: dict[str, Any] = {}
    if yaml_path is not None:
        doc = _load_yaml(yaml_path)
        if doc.get("path") not in (None, ""):
            p = Path(str(doc["path"]))
            base = p if p.is_absolute() else root / p
            if not base.is_dir():
                raise InputError(
                    f"'{yaml_path}' 'path: {doc['path']}' resolves to '{base}', which is not a folder; "
                    "'path:' is relative to the yaml's folder"
                )
    if doc.get("names") is not None:
        classes = _names_from_yaml(yaml_path, doc["names"])
        nc = doc.get("nc")
        if nc is not None and nc != len(classes):
            raise InputError(
                f"'{yaml_path}' says nc: {nc} but 'names:' has {len(classes)} classes; make them agree"
            )
    elif classes_txt.is_file():
        classes = read_classes_txt(classes_txt)
    elif yaml_path is not None:
        raise InputError(
            f"'{yaml_path}' has no 'names:' and there is no '{classes_txt}'; list the class names "
            "under names: (or one per line in classes.txt)"
        )
    else:
        raise InputError(
            f"data folder '{root}' has no class names; add classes.txt (one name per line) or "
            "dataset.yaml with names:"
        )

    where = f"'{yaml_path}'" if yaml_path is not None else f"data folder '{root}'"
    if doc.get("train") is not None:
        train = _split_dirs(yaml_path, base, "train", doc["train"])
    elif (base / "images" / "train").is_dir():
        train = [base / "images" / "train"]
    else:
        raise InputError(
            f"{where}: there is no '{base / 'images' / 'train'}' folder; put the training images there"
            + (" or set train:" if yaml_path is not None else "")
        )
    if doc.get("val") is not None:
        val = _split_dirs(yaml_path, base, "val", doc["val"])
    else:
        found = next((base / "images" / n for n in VAL_NAMES if (base / "images" / n).is_dir()), None)
        if found is None:
            raise InputError(
                f"{where}: there is no val split ('{base / 'images' / 'val'}' is missing); put validation "
                "images in images/val and their labels in labels/val"
                + (" or set val:" if yaml_path is not None else "")
            )
        val = [found]
    return classes, train, val


def parse_label_file(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (normalized xyxy, clipped to [0, 1]) and class ids of one YOLO label file."""
    boxes: list[tuple[float, float, float, float]] = []
    labels: list[int] = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        at = f"'{path}' line {n}"
        if len(fields) != 5:
            extra = "; segment/polygon labels are not supported" if len(fields) > 5 else ""
            raise InputError(f"{at} has {len(fields)} values, expected 5 ({LINE_HINT}){extra}")
        values = []
        for name, text in zip(("class", "cx", "cy", "w", "h"), fields, strict=True):
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise InputError(f"{at}: {name} '{text}' is not a number ({LINE_HINT})")
            values.append(v)
        cls, cx, cy, w, h = values
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise InputError(
                f"{at}: class id '{fields[0]}' is not one of the {num_classes} class ids "
                f"0..{num_classes - 1}; fix the label or add the class name"
            )
        for name, v, text in zip(("cx", "cy", "w", "h"), values[1:], fields[1:], strict=True):
            if not -TOLERANCE <= v <= 1 + TOLERANCE:
                raise InputError(
                    f"{at}: {name} {text} is outside [0, 1]; "
                    "YOLO boxes are normalized by the image width and height"
                )
        if w <= 0 or h <= 0:
            raise InputError(f"{at}: box width and height must be > 0 (w {fields[3]}, h {fields[4]})")
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        problem = check_box(*box)
        if problem is not None:
            raise InputError(f"{at}: the box {problem}; YOLO boxes are center x, center y, width, height")
        boxes.append(box)
        labels.append(int(cls))
    array = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0.0, 1.0)
    return array, np.asarray(labels, dtype=np.int64)


def _read_split(split: str, dirs: list[Path], classes: list[str]) -> list[DetectionSample]:
    samples = []
    for folder in dirs:
        images = list_images(folder)
        if not images:
            raise InputError(
                f"'{folder}' has no images ({', '.join(IMAGE_EXTENSIONS)}); put the {split} images there"
            )
        for image in images:
            size = image_size(image)
            label = label_path(image)
            if label.is_file():
                boxes, labels = parse_label_file(label, len(classes))
            else:
                boxes, labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
            samples.append(DetectionSample(image=image, boxes=boxes, labels=labels, size=size))
    return samples


def read_yolo(root: Path) -> tuple[list[str], list[DetectionSample], list[DetectionSample]]:
    """(classes, train samples, val samples) of a YOLO dataset; InputError on bad data."""
    classes, train_dirs, val_dirs = _layout(root)
    return classes, _read_split("train", train_dirs, classes), _read_split("val", val_dirs, classes)
