"""Hugging Face ``datasets`` for text classification, as the original supported for NLP.

Two sources end up here: a folder written by ``save_to_disk`` (a ``DatasetDict`` with
train + validation/val/test splits, or a single ``Dataset``, split 80/20 by the seed), and a
hub dataset id that :mod:`..named` loads through the ``datasets`` cache and saves to disk.
Rows become the same :class:`TextSplits` the CSV/JSONL reader gives, so tokenization and
training are shared.

Column and split selection (``--train-kwargs`` keys, see ``DATA_KWARGS``): ``text_column``,
``text_pair_column``, ``label_column`` (default ``label``), ``train_split`` (default
``train``), ``val_split`` (default the first of ``VAL_SPLITS`` present), ``dataset_config``
(a hub dataset's configuration, e.g. ``plain_text``). Without ``text_column`` the feature
columns follow the CSV rule (``sentence1``/``sentence2``, else the first text column or a
known pair such as question/sentence).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError, TransientError
from .text import TextSplits, _class_key, feature_columns

DATA_KWARGS = (
    "text_column",
    "text_pair_column",
    "label_column",
    "train_split",
    "val_split",
    "dataset_config",
)
VAL_SPLITS = ("validation", "val", "validation_matched", "dev", "test")


def split_data_kwargs(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data options, training options) of ``--train-kwargs``."""
    data = {k: v for k, v in raw.items() if k in DATA_KWARGS}
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"train-kwargs '{key}' must be a non-empty string (a column or split name)")
    return data, {k: v for k, v in raw.items() if k not in DATA_KWARGS}


def is_saved_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder: ``dataset_dict.json`` (DatasetDict) or ``state.json`` +
    ``dataset_info.json`` (Dataset)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def _datasets_cache() -> str | None:
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.environ["HF_DATASETS_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "datasets")
    return None


def materialize_hub_dataset(path: str, config: str | None, out: Path) -> Path:
    """``datasets.load_dataset(path, config)`` (its cache; offline: the cache only), saved to ``out``."""
    import datasets

    shown = f"{path}/{config}" if config else path
    cache = _datasets_cache()
    where = cache or datasets.config.HF_DATASETS_CACHE
    try:
        loaded = datasets.load_dataset(path, config, cache_dir=cache)
    except (ConnectionError, FileNotFoundError) as err:
        offline = "offline" in str(err).lower() or datasets.config.HF_HUB_OFFLINE
        if offline:
            raise InputError(
                f"data '{shown}' is not a local path and not in the datasets cache (offline); load it once "
                f"online with HF_DATASETS_CACHE={where} (datasets.load_dataset('{path}'"
                + (f", '{config}'" if config else "")
                + "), or pass a save_to_disk folder"
            ) from None
        raise TransientError(
            f"data '{shown}': the Hugging Face hub could not be reached ({err}); retry"
        ) from None
    except ValueError as err:  # unknown configuration and the like
        raise InputError(f"data '{shown}': {str(err).splitlines()[0][:200]}") from None
    loaded.save_to_disk(str(out))
    return out


def _split(ds, name: str, root: Path, available: list[str]):
    if name not in available:
        raise InputError(
            f"dataset '{root}' has no split '{name}' (splits: {', '.join(available)}); pass "
            '--train-kwargs \'{"train_split": ..., "val_split": ...}\''
        )
    return ds[name]


def _rows(ds, columns: list[str], label: str, names: list[str] | None, where: str) -> list[dict[str, Any]]:
    rows = []
    for i, row in enumerate(ds.select_columns([*columns, label]).to_list()):
        value = row.pop(label)
        if value is None or (names is not None and int(value) < 0):
            raise InputError(
                f"{where} row {i + 1} has no label ({value!r}); pick a labelled split with "
                "--train-kwargs '{\"val_split\": ...}'"
            )
        row["label"] = names[int(value)] if names is not None else value
        rows.append(row)
    if not rows:
        raise InputError(f"{where} has no rows")
    return rows


def inspect_hf(root: Path, options: dict[str, Any], seed: int = 0) -> TextSplits:
    """Read a ``save_to_disk`` folder into train/val rows; InputError with one line otherwise."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(root))
    except (OSError, ValueError, FileNotFoundError) as err:
        raise InputError(
            f"data '{root}' is not a readable datasets folder ({str(err).splitlines()[0][:160]})"
        ) from None
    label = options.get("label_column", "label")
    if isinstance(ds, datasets.DatasetDict):
        available = list(ds)
        train_name = options.get("train_split", "train")
        train = _split(ds, train_name, root, available)
        val_name = options.get("val_split") or next((s for s in VAL_SPLITS if s in available), None)
        if val_name is None:
            parts = train.train_test_split(test_size=0.2, seed=seed)
            train, val, val_name = parts["train"], parts["test"], f"{train_name} (20% held out)"
        else:
            val = _split(ds, val_name, root, available)
    else:
        if len(ds) < 5:
            raise InputError(
                f"dataset '{root}' has {len(ds)} rows; a train/validation split needs at least 5"
            )
        parts = ds.train_test_split(test_size=0.2, seed=seed)
        train, val, train_name, val_name = parts["train"], parts["test"], "80%", "20% held out"
    columns = list(train.column_names)
    if label not in columns:
        raise InputError(
            f"dataset '{root}' split '{train_name}' has no label column '{label}' "
            f"(columns: {', '.join(columns)}); "
            "pass --train-kwargs '{\"label_column\": ...}'"
        )
    feature = train.features[label]
    if isinstance(feature, datasets.Sequence | list) or getattr(feature, "dtype", "") == "list":
        raise InputError(
            f"dataset '{root}' label column '{label}' holds lists (multi-label); text classification "
            "needs one label per row"
        )
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if options.get("text_column"):
        features = [options["text_column"]] + (
            [options["text_pair_column"]] if options.get("text_pair_column") else []
        )
    else:
        text_like = [c for c in columns if c == label or _is_text(train.features[c])]
        features = feature_columns(["label" if c == label else c for c in text_like])
    for split_name, part in ((train_name, train), (val_name, val)):
        missing = [c for c in [*features, label] if c not in part.column_names]
        if missing:
            raise InputError(
                f"dataset '{root}' split '{split_name}' has no column(s) {missing} "
                f"(columns: {', '.join(part.column_names)}); fix --train-kwargs text_column/label_column"
            )
    train_rows = _rows(train, features, label, names, f"dataset '{root}' split '{train_name}'")
    val_rows = _rows(val, features, label, names, f"dataset '{root}' split '{val_name}'")
    for rows in (train_rows, val_rows):
        for r in rows:
            r["label"] = (
                str(int(r["label"]))
                if isinstance(r["label"], float) and r["label"].is_integer()
                else str(r["label"])
            )
    used = {r["label"] for r in train_rows}
    classes = [n for n in names if n in used] if names else sorted(used, key=_class_key)
    extra = sorted({r["label"] for r in val_rows} - set(classes))
    if extra:
        raise InputError(
            f"dataset '{root}': split '{val_name}' has labels {extra} that split '{train_name}' never uses; "
            "both splits need the same label set"
        )
    if len(classes) < 2:
        raise InputError(
            f"dataset '{root}' split '{train_name}' has a single label {classes}; need at least two"
        )
    return TextSplits(
        root, root / str(train_name), root / str(val_name), features, classes, train_rows, val_rows
    )


def _is_text(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")
