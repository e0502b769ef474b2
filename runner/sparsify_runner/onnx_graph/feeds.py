"""Calibration samples (input name -> array without the batch dimension) as onnxruntime
feeds at the model's batch size: the one place that stacks samples into batches (the last
batch is padded by repeating the first samples, so every feed has the static batch size)."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import InputError


def batch_size(model: onnx.ModelProto, init_names: set[str]) -> int:
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
        return 1
    return 1


def make_feeds(
    model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], init_names: set[str]
) -> list[dict[str, np.ndarray]]:
    """Calibration samples (no batch dim) -> onnxruntime feeds at the model's batch size."""
    inputs = [vi for vi in model.graph.input if vi.name not in init_names]
    batch = batch_size(model, init_names)
    for i, sample in enumerate(calibration):
        missing = [vi.name for vi in inputs if vi.name not in sample]
        if missing:
            raise InputError(
                f"calibration sample {i} lacks model input(s) {missing}; each sample must map every "
                f"model input name to an array without the batch dimension"
            )
    feeds: list[dict[str, np.ndarray]] = []
    for chunk in chunks(calibration, batch):
        feed = {}
        for vi in inputs:
            elem = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            want = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            arr = np.stack([np.asarray(s[vi.name]) for s in chunk]).astype(elem, copy=False)
            if len(want) != arr.ndim or any(
                w not in (None, 0, n) for w, n in zip(want, arr.shape, strict=True)
            ):
                raise InputError(
                    f"calibration input {vi.name!r} has per-sample shape {list(arr.shape[1:])}, the model "
                    f"expects {want[1:]} (without the batch dimension)"
                )
            feed[vi.name] = arr
        feeds.append(feed)
    return feeds


def chunks(samples: list[dict[str, np.ndarray]], size: int) -> list[list[dict[str, np.ndarray]]]:
    """``samples`` in groups of ``size``; the last group padded by repeating the first samples."""
    groups = []
    for start in range(0, len(samples), size):
        group = samples[start : start + size]
        while len(group) < size:
            group = group + samples[: size - len(group)]
        groups.append(group)
    return groups


def stack_batches(
    samples: list[dict[str, np.ndarray]], size: int, names: list[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """Samples stacked into batches of ``size`` (inputs ``names``, default: every key)."""
    return [
        {name: np.stack([s[name] for s in group]) for name in (names or list(group[0]))}
        for group in chunks(samples, size)
    ]
