"""A folder of ``.npz`` samples: the one-shot data format (as in the original product).

Each file is one sample: a mapping from every ONNX input name to an array *without* the
batch dimension (shape = the model input's shape minus its first dimension). An optional
``label`` key holds the sample's integer class (a 0-d or 1-element array); when every
file has one, the report gives accuracy, otherwise fidelity to the baseline. For a detector
(``detection=True``) the optional keys are ``boxes`` ((n, 4) x1, y1, x2, y2 in the model
input's pixels) and ``labels`` ((n,) integer classes), both or neither; with them on every
file the report gives mAP. Files are read
recursively and sorted by relative path, so the split below is reproducible.

Split rule (deterministic, no randomness): with ``n`` samples and ``n >= MIN_FOR_HOLDOUT``,
``h = clamp(round(n * holdout_fraction), 1, max_holdout)`` samples spread evenly over the
sorted order are held out for evaluation and never used for calibration; the remaining
samples (at most ``calibration_samples`` of them, again spread evenly) calibrate pruning
and INT8. With fewer than ``MIN_FOR_HOLDOUT`` samples there is nothing to spare: all of
them calibrate, evaluation runs on the same samples, and ``split.notes`` says so.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..onnx_model import InputSpec

LABEL_KEY = "label"
BOX_KEYS = ("boxes", "labels")
MIN_FOR_HOLDOUT = 5

Sample = dict[str, np.ndarray]


@dataclass
class NpzDataset:
    files: list[Path]
    samples: list[Sample]
    labels: list[Any] | None
    """Per sample: an int class, or for detectors a (boxes (n, 4), labels (n,)) pair."""


@dataclass
class Split:
    calibration: list[Sample]
    holdout: list[Sample]
    holdout_labels: list[Any] | None
    calibration_files: list[str]
    holdout_files: list[str]
    notes: list[str] = field(default_factory=list)
    disjoint: bool = True


def list_npz(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"data folder '{folder}' does not exist; pass a folder of .npz samples with --data")
    if not folder.is_dir():
        raise InputError(f"data '{folder}' is not a folder; one-shot --data takes a folder of .npz samples")
    files = sorted(
        (p for p in folder.rglob("*.npz") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()
    )
    if not files:
        raise InputError(
            f"data folder '{folder}' has no .npz files; save one sample per file with "
            "numpy.savez(path, **{input_name: array_without_batch_dim})"
        )
    return files


def _read_target(path: Path, raw: dict[str, np.ndarray], detection: bool) -> Any:
    """The sample's ``label`` (an int), a detector's ``(boxes, labels)``, or None."""
    if not detection:
        if LABEL_KEY not in raw:
            return None
        lab = np.asarray(raw[LABEL_KEY])
        if lab.size != 1 or lab.dtype.kind not in "iu":
            raise InputError(
                f"data file '{path}': '{LABEL_KEY}' must be one integer class index, "
                f"got dtype {lab.dtype} shape {tuple(lab.shape)}"
            )
        return int(lab.reshape(-1)[0])
    present = [k for k in BOX_KEYS if k in raw]
    if not present:
        return None
    if len(present) == 1:
        raise InputError(
            f"data file '{path}' has '{present[0]}' without '{({*BOX_KEYS} - {present[0]}).pop()}'; "
            "give a detector's samples both 'boxes' (n, 4) and 'labels' (n,), or neither"
        )
    boxes, labels = np.asarray(raw["boxes"]), np.asarray(raw["labels"])
    if boxes.dtype.kind not in "fiu" or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(
            f"data file '{path}': 'boxes' must be an (n, 4) array of x1, y1, x2, y2 pixels, got dtype "
            f"{boxes.dtype} shape {tuple(boxes.shape)}"
        )
    if labels.dtype.kind not in "iu" or labels.shape != (len(boxes),):
        raise InputError(
            f"data file '{path}': 'labels' must be ({len(boxes)},) integer classes (one per box), got "
            f"dtype {labels.dtype} shape {tuple(labels.shape)}"
        )
    if len(boxes) and bool(np.any(boxes[:, 2:] <= boxes[:, :2])):
        raise InputError(f"data file '{path}': a box has x2 <= x1 or y2 <= y1; boxes are x1, y1, x2, y2")
    if len(labels) and labels.min() < 0:
        raise InputError(f"data file '{path}': 'labels' has a negative class index")
    return boxes.astype(np.float32), labels.astype(np.int64)


def _read_one(path: Path, inputs: list[InputSpec], detection: bool = False) -> tuple[Sample, Any]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except PermissionError:
        raise InputError(
            f"data file '{path}' cannot be read (permission denied); check its permissions"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(
            f"data file '{path}' is not a readable .npz archive ({type(err).__name__}); "
            "write samples with numpy.savez"
        ) from None
    expected = {spec.name for spec in inputs}
    optional = set(BOX_KEYS) if detection else {LABEL_KEY}
    missing = sorted(expected - set(raw))
    extra = sorted(set(raw) - expected - optional)
    if missing or extra:
        what = []
        if missing:
            what.append(f"missing input(s) {', '.join(repr(m) for m in missing)}")
        if extra:
            what.append(f"unknown key(s) {', '.join(repr(e) for e in extra)}")
        raise InputError(
            f"data file '{path}': {' and '.join(what)}; the model expects keys "
            f"{', '.join(repr(s.name) for s in inputs)} (plus optional "
            f"{' and '.join(repr(k) for k in sorted(optional))})"
        )
    sample: Sample = {}
    for spec in inputs:
        arr = raw[spec.name]
        if tuple(arr.shape) != spec.sample_shape:
            same_rank = tuple(arr.shape) == spec.shape
            hint = "drop the batch dimension" if same_rank else "resize the sample"
            raise InputError(
                f"data file '{path}' input '{spec.name}': expected shape {spec.sample_shape} "
                f"(model shape {spec.shape} without the batch dimension), got {tuple(arr.shape)}; {hint}"
            )
        if arr.dtype != spec.dtype:
            same_kind = (arr.dtype.kind == "f" and spec.dtype.kind == "f") or (
                arr.dtype.kind in "iub" and spec.dtype.kind in "iu"
            )
            if not same_kind:
                raise InputError(
                    f"data file '{path}' input '{spec.name}': expected dtype {spec.dtype}, got {arr.dtype}; "
                    f"save the array as {spec.dtype}"
                )
            arr = arr.astype(spec.dtype)
        sample[spec.name] = np.ascontiguousarray(arr)
    return sample, _read_target(path, raw, detection)


def load_npz_folder(
    folder: Path, inputs: list[InputSpec], *, show_progress: bool = False, detection: bool = False
) -> NpzDataset:
    """Read and validate every sample; InputError names the file, the input and expected vs got.
    ``detection``: the optional keys are a detector's ``boxes`` / ``labels``, not ``label``."""
    from ..progress import track

    files = list_npz(folder)
    samples: list[Sample] = []
    labels: list[int | None] = []
    for path in track(files, "read samples", enabled=show_progress and len(files) > 200):
        sample, label = _read_one(path, inputs, detection)
        samples.append(sample)
        labels.append(label)
    with_label = [lab is not None for lab in labels]
    if any(with_label) and not all(with_label):
        first = files[with_label.index(False)]
        key = "'boxes'/'labels'" if detection else f"'{LABEL_KEY}'"
        raise InputError(f"data file '{first}' has no {key} while others do; give every sample them or none")
    return NpzDataset(files, samples, list(labels) if all(with_label) else None)


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (deterministic)."""
    if k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def split_samples(
    data: NpzDataset,
    *,
    holdout_fraction: float = 0.2,
    max_holdout: int = 200,
    calibration_samples: int = 256,
) -> Split:
    """Deterministic calibration / held-out split (see the module docstring for the rule)."""
    n = len(data.samples)
    names = [p.name for p in data.files]
    notes: list[str] = []
    if n < MIN_FOR_HOLDOUT:
        idx = list(range(n))
        notes.append(
            f"only {n} sample(s): too few to hold any out, so fidelity/accuracy is measured on the "
            f"calibration samples themselves (optimistic); give at least {MIN_FOR_HOLDOUT * 4} samples"
        )
        return Split(
            [data.samples[i] for i in idx][:calibration_samples],
            [data.samples[i] for i in idx],
            list(data.labels) if data.labels is not None else None,
            names[:calibration_samples],
            names,
            notes,
            disjoint=False,
        )
    h = int(min(max(1, round(n * holdout_fraction)), max_holdout, n - 1))
    hold = _spread(n, h)
    held = set(hold)
    rest = [i for i in range(n) if i not in held]
    calib = [rest[j] for j in _spread(len(rest), min(calibration_samples, len(rest)))]
    if len(rest) > len(calib):
        notes.append(
            f"{len(rest) - len(calib)} sample(s) beyond calibration_samples={calibration_samples} unused"
        )
    return Split(
        calibration=[data.samples[i] for i in calib],
        holdout=[data.samples[i] for i in hold],
        holdout_labels=[data.labels[i] for i in hold] if data.labels is not None else None,
        calibration_files=[names[i] for i in calib],
        holdout_files=[names[i] for i in hold],
        notes=notes,
    )
