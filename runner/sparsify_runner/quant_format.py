"""Which INT8 operator format a deployment target gets (torch-free).

``auto`` means QDQ: onnxruntime on CPU is fastest with it and TensorRT consumes it too.
``qoperator`` (QLinear*/ConvInteger operators) is for sparsity-aware CPU runtimes that ignore
QDQ. A recipe's ``quant_format`` (one-shot's ``Int8SearchConfig``), when set, overrides the
deployment target's. Whether the weights need ``reduce_range`` is a property of the CPU, not of
the format: ``cpu_features.int8_saturates``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .spec import DeployTarget

QuantFormatName = Literal["qdq", "qoperator"]


def resolve_quant_format(deploy: DeployTarget, recipe_format: str | None = None) -> QuantFormatName:
    """The format the INT8 model is built in: the recipe's, else the deployment target's,
    with ``auto`` resolved to ``qdq``."""
    fmt = recipe_format or deploy.quant_format
    if fmt not in ("auto", "qdq", "qoperator"):
        raise ValueError(f"unknown INT8 quant format {fmt!r}: use auto, qdq or qoperator")
    return "qoperator" if fmt == "qoperator" else "qdq"


def onnxruntime_quant_format(fmt: QuantFormatName) -> Any:
    """``onnxruntime.quantization.QuantFormat`` for a resolved format name."""
    from onnxruntime.quantization import QuantFormat

    return QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ
