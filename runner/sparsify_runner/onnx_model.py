"""Load and validate an ONNX model given by the user (one-shot input)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import InputError


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    """Full static shape, batch dimension first."""
    dtype: np.dtype

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample (no batch dimension), as stored in the .npz files."""
        return self.shape[1:]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return dims


def load_onnx(path: Path, *, what: str = "model", flag: str = "--model") -> onnx.ModelProto:
    """Read and check an ONNX file; InputError (one line) for missing/unreadable/non-ONNX files."""
    path = Path(path)
    if not path.exists():
        hint = f" with {flag}" if flag else ""
        raise InputError(f"{what} file '{path}' does not exist; pass an existing .onnx file{hint}")
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder; pass a single .onnx file")
    try:
        with path.open("rb") as fh:
            head = fh.read(1)
    except OSError as err:
        raise InputError(
            f"{what} file '{path}' cannot be read ({err.strerror}); check its permissions"
        ) from None
    if not head:
        raise InputError(f"{what} file '{path}' is empty; export the model to ONNX again")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as err:  # protobuf DecodeError, external data errors, ...
        raise InputError(
            f"{what} file '{path}' is not an ONNX model ({type(err).__name__}); "
            "export it with torch.onnx.export or a converter and pass the .onnx file"
        ) from None
    if not model.graph.node or not model.graph.output:
        raise InputError(
            f"{what} file '{path}' is not an ONNX model (no graph nodes/outputs); pass a real .onnx file"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise InputError(f"{what} file '{path}' is not a valid ONNX model: {first}") from None
    return model


def model_inputs(model: onnx.ModelProto, path: Path | str = "model") -> list[InputSpec]:
    """The graph's real inputs (initializers excluded) with static shapes, else InputError."""
    inits = {i.name for i in model.graph.initializer}
    specs: list[InputSpec] = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise InputError(
                f"model '{path}' input '{vi.name}' is not a tensor; one-shot supports tensor inputs only"
            )
        dims = _dims(vi)
        if not dims or any(not isinstance(d, int) for d in dims):
            shown = "x".join(str(d) if d is not None else "?" for d in dims) or "unknown rank"
            raise InputError(
                f"model '{path}' input '{vi.name}' has a dynamic shape ({shown}); one-shot needs static "
                "shapes: re-export with fixed dimensions (e.g. torch.onnx.export without dynamic_axes)"
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        specs.append(InputSpec(vi.name, tuple(int(d) for d in dims), dtype))
    if not specs:
        raise InputError(f"model '{path}' has no inputs; pass a model that takes at least one tensor")
    return specs


# Nodes of a model that is already quantized (QDQ, QOperator, integer and 4-bit weight ops).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
        "MatMulNBits",
    }
)


def check_not_quantized(model: onnx.ModelProto, path: Path | str) -> None:
    """One-shot starts from the FP32 model: pruning and INT8 calibration of a quantized graph
    fail deep inside, so say so up front (``QLinear*`` covers the contrib ops, QLinearAdd ...)."""
    counts = Counter(
        n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear")
    )
    if counts:
        found = ", ".join(f"{n} {op} node{'s' if n > 1 else ''}" for op, n in counts.most_common())
        raise InputError(f"--model '{path}' is already quantized ({found}); pass the FP32 model it came from")


def load_static_model(path: Path) -> tuple[onnx.ModelProto, list[InputSpec]]:
    """Load + validate a one-shot input model: ONNX, checkable, not quantized, static input shapes."""
    model = load_onnx(path)
    check_not_quantized(model, path)
    return model, model_inputs(model, path)
