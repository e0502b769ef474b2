"""A Triton model repository laid out beside ``model.onnx`` so KServe / Triton load the result as is.

KServe's ONNX runtime is Triton, and Triton wants a *model repository*, not a bare file::

    model_repository/
      <name>/config.pbtxt      platform "onnxruntime_onnx", batching, input/output tensors
      <name>/1/model.onnx      version 1 (plus any external-data files the model points to)

``write_model_repository`` builds it inside the run's staging folder, so it goes through the
same atomic publish as ``model.onnx`` (marker last). ``config.pbtxt`` is generated from the
ONNX graph: Triton's ONNX Runtime backend batches only when the first dimension of every
input and output is dynamic, so ``max_batch_size`` is the deploy batch size then (dims listed
without the batch dimension), and 0 for fixed-shape models (full dims). Pure: onnx only.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

REPOSITORY_DIR = "model_repository"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
DEFAULT_NAME = "model"

# ONNX TensorProto element type name -> Triton data type
_TRITON_TYPES = {
    "FLOAT": "TYPE_FP32",
    "FLOAT16": "TYPE_FP16",
    "BFLOAT16": "TYPE_BF16",
    "DOUBLE": "TYPE_FP64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "BOOL": "TYPE_BOOL",
    "STRING": "TYPE_STRING",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton TYPE_*
    shape: tuple[int, ...]  # -1 = dynamic


@dataclass(frozen=True)
class ModelRepository:
    name: str
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    files: tuple[str, ...]  # paths relative to the staging folder


def model_name(experiment_name: str | None) -> str:
    """A DNS-safe form of the experiment name (Triton's URL path, KServe-friendly), else ``model``."""
    name = re.sub(r"[^a-z0-9-]+", "-", (experiment_name or "").lower()).strip("-")
    return name[:63].rstrip("-") or DEFAULT_NAME


def _tensors(values, skip: set[str]) -> list[Tensor]:
    import onnx

    out = []
    for value in values:
        if value.name in skip:
            continue
        ttype = value.type.tensor_type
        elem = onnx.TensorProto.DataType.Name(ttype.elem_type)
        if elem not in _TRITON_TYPES:
            raise ValueError(f"tensor '{value.name}' has element type {elem}, which Triton cannot serve")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
        out.append(Tensor(value.name, _TRITON_TYPES[elem], dims))
    return out


def describe(model_path: Path, batch_size: int = 1) -> tuple[int, list[Tensor], list[Tensor]]:
    """(max_batch_size, inputs, outputs) with full shapes as the graph declares them."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = _tensors(graph.input, initializers)
    outputs = _tensors(graph.output, set())
    tensors = inputs + outputs
    batchable = bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)
    return (max(1, batch_size) if batchable else 0), inputs, outputs


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(name: str, max_batch_size: int, inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """Triton's model configuration (protobuf text format)."""

    def block(kind: str, tensors: list[Tensor]) -> list[str]:
        lines = [f"{kind} ["]
        for i, t in enumerate(tensors):
            dims = t.shape[1:] if max_batch_size > 0 else t.shape
            lines += [
                "  {",
                f"    name: {_quote(t.name)}",
                f"    data_type: {t.data_type}",
                f"    dims: [ {', '.join(str(d) for d in dims)} ]",
                "  }" + ("," if i < len(tensors) - 1 else ""),
            ]
        return [*lines, "]"]

    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(PLATFORM)}",
        f"max_batch_size: {max_batch_size}",
        *block("input", inputs),
        *block("output", outputs),
    ]
    return "\n".join(lines) + "\n"


def _external_files(model_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return sorted(
        {
            entry.value
            for t in graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for entry in t.external_data
            if entry.key == "location"
        }
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same staging folder: no second copy on disk
    except OSError:
        shutil.copyfile(src, dst)


def write_model_repository(
    staging: Path, model_file: str, *, experiment_name: str | None, batch_size: int = 1
) -> ModelRepository:
    """Lay out ``staging/model_repository/<name>/{config.pbtxt,1/model.onnx}`` from ``staging/model_file``."""
    source = staging / model_file
    name = model_name(experiment_name)
    max_batch, inputs, outputs = describe(source, batch_size)
    base = staging / REPOSITORY_DIR / name
    version = base / VERSION
    files = [f"{REPOSITORY_DIR}/{name}/{VERSION}/model.onnx"]
    _link_or_copy(source, version / "model.onnx")
    for rel in _external_files(source):
        _link_or_copy(source.parent / rel, version / rel)
        files.append(f"{REPOSITORY_DIR}/{name}/{VERSION}/{rel}")
    (base / CONFIG_FILE).write_text(config_pbtxt(name, max_batch, inputs, outputs), encoding="utf-8")
    files.append(f"{REPOSITORY_DIR}/{name}/{CONFIG_FILE}")
    return ModelRepository(name, max_batch, tuple(inputs), tuple(outputs), tuple(files))


def add_to_staging(staging: Path, model_file: str, *, experiment_name: str | None, batch_size: int) -> bool:
    """``write_model_repository`` for a run: a model Triton cannot be described to (an element
    type it lacks, a graph onnx cannot parse) is no reason to fail a finished optimization, so
    it only logs and returns False (nothing half-written stays in the staging folder)."""
    import logging

    try:
        repo = write_model_repository(
            staging, model_file, experiment_name=experiment_name, batch_size=batch_size
        )
    except Exception as err:  # noqa: BLE001 - any failure here only costs the serving layout
        logging.getLogger("sparsify.runner").warning("no Triton model repository for this model: %s", err)
        shutil.rmtree(staging / REPOSITORY_DIR, ignore_errors=True)
        return False
    logging.getLogger("sparsify.runner").info(
        "Triton model repository: %s/%s (max_batch_size %d)", REPOSITORY_DIR, repo.name, repo.max_batch_size
    )
    return True
