"""Text-classification data: ``train`` and ``val`` files (``.csv`` or ``.jsonl``) with a
``label`` column. Feature columns follow the original product's rule: ``sentence1`` /
``sentence2`` when present, else the first one or two non-label columns.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "dev", "test")}
SUFFIXES = (".csv", ".jsonl", ".json")


@dataclass
class TextSplits:
    root: Path
    train_file: Path
    val_file: Path
    feature_columns: list[str]
    classes: list[str]
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]

    def texts(self, rows: list[dict[str, Any]]) -> tuple[list[str], list[str] | None]:
        first = [str(r.get(self.feature_columns[0]) or "") for r in rows]
        if len(self.feature_columns) < 2:
            return first, None
        return first, [str(r.get(self.feature_columns[1]) or "") for r in rows]

    def labels(self, rows: list[dict[str, Any]]) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[_label(r)] for r in rows]


def split_file(root: Path, stems: tuple[str, ...], suffixes: tuple[str, ...]) -> Path | None:
    """The first ``root/STEM.SUFFIX`` that is a file, stems first (``train.csv`` before
    ``calibration.csv``), or None."""
    for stem in stems:
        for suffix in suffixes:
            if (root / f"{stem}{suffix}").is_file():
                return root / f"{stem}{suffix}"
    return None


def _find(root: Path, split: str) -> Path:
    found = split_file(root, SPLIT_NAMES[split], SUFFIXES)
    if found is not None:
        return found
    raise InputError(
        f"data folder '{root}' has no {split} file; text classification expects "
        f"{SPLIT_NAMES[split][0]}.csv or {SPLIT_NAMES[split][0]}.jsonl with a 'label' column"
    )


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"'{path}' is not UTF-8 text (invalid byte at offset {err.start}); re-save it as UTF-8"
        ) from None
    if path.suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as err:
            raise InputError(f"'{path}' is not valid CSV: {err}") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(
                    f"'{path}' line {n} is not valid JSON ({err.msg}); one object per line"
                ) from None
            if not isinstance(row, dict):
                raise InputError(f"'{path}' line {n} is not a JSON object; one object per line")
            rows.append(row)
    if not rows:
        raise InputError(f"'{path}' has no rows")
    return rows


def _label(row: dict[str, Any]) -> str:
    value = row.get("label")
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return [c for c in rows[0] if c is not None]


def feature_columns(columns: list[str]) -> list[str]:
    """sentence1/sentence2 when present, else the first one or two non-label columns
    (two only when the first two are both text-like names such as question/context)."""
    if "sentence1" in columns:
        return ["sentence1"] + (["sentence2"] if "sentence2" in columns else [])
    rest = [c for c in columns if c != "label" and c not in ("idx", "id")]
    if not rest:
        raise InputError("text data has no feature column besides 'label'")
    return rest[:2] if len(rest) >= 2 and _is_pair(rest[0], rest[1]) else rest[:1]


def _is_pair(a: str, b: str) -> bool:
    pairs = {
        ("question", "sentence"),
        ("question", "context"),
        ("premise", "hypothesis"),
        ("question1", "question2"),
        ("text_a", "text_b"),
        ("text", "text_pair"),
    }
    return (a, b) in pairs


def inspect_text(root: Path) -> TextSplits:
    """Validate and read both splits; raise InputError with one line otherwise."""
    if not root.is_dir():
        raise InputError(
            f"data '{root}' is not a folder; text classification expects train.csv/val.csv (or .jsonl)"
        )
    train_file, val_file = _find(root, "train"), _find(root, "val")
    train_rows, val_rows = _read(train_file), _read(val_file)
    for path, rows in ((train_file, train_rows), (val_file, val_rows)):
        cols = _columns(rows)
        if "label" not in cols:
            raise InputError(f"'{path}' has no 'label' column (columns: {', '.join(cols)}); add one")
        missing = [i for i, r in enumerate(rows) if r.get("label") in (None, "")]
        if missing:
            raise InputError(f"'{path}' row {missing[0] + 1} has an empty label; every row needs one")
    features = feature_columns(_columns(train_rows))
    for f in features:
        if f not in _columns(val_rows):
            raise InputError(f"'{val_file}' lacks the feature column '{f}' that '{train_file}' has")
    train_classes = sorted({_label(r) for r in train_rows}, key=_class_key)
    val_classes = sorted({_label(r) for r in val_rows}, key=_class_key)
    extra = sorted(set(val_classes) - set(train_classes))
    if extra:
        raise InputError(
            f"classes differ between splits: '{val_file}' has labels {extra} "
            f"that '{train_file}' never uses; both splits need the same label set"
        )
    if len(train_classes) < 2:
        raise InputError(
            f"'{train_file}' has a single label {train_classes}; classification needs at least two"
        )
    return TextSplits(root, train_file, val_file, features, train_classes, train_rows, val_rows)


def _class_key(value: str) -> tuple[int, Any]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)
