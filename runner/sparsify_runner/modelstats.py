"""Size, parameters, sparsity and MACs of an ONNX model (FP32, QDQ or QOperator INT8).

File size and gzip size are both reported: zeros left by unstructured pruning do not
shrink the ONNX file (dense tensors are stored dense) but compress well, so only the
compressed size shows the gain.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .report import LayerReport, ModelStats

# op type -> index of its weight input
WEIGHT_INPUT = {
    "Conv": 1,
    "Gemm": 1,
    "MatMul": 1,
    "ConvInteger": 1,
    "MatMulInteger": 1,
    "QLinearConv": 3,
    "QLinearMatMul": 3,
}
# op type -> index of the weight zero point (quantized operator formats)
WEIGHT_ZP_INPUT = {"ConvInteger": 3, "MatMulInteger": 3, "QLinearConv": 5, "QLinearMatMul": 5}


@dataclass
class WeightInfo:
    node: onnx.NodeProto
    values: np.ndarray
    zero_point: np.ndarray | None
    quantized: bool
    axis: int = 0
    """Axis of per-channel zero points: 0 for conv weights, 1 for MatMul's [K, N] weights."""

    @property
    def zeros(self) -> int:
        if self.zero_point is None:
            return int(np.count_nonzero(self.values == 0))
        zp = np.asarray(self.zero_point)
        if zp.size > 1:  # per-channel zero points along self.axis
            shape = [1] * self.values.ndim
            shape[self.axis % self.values.ndim] = -1
            zp = zp.reshape(shape)
        return int(np.count_nonzero(self.values == zp))


def _dequant_sources(
    model: onnx.ModelProto, inits: dict[str, onnx.TensorProto]
) -> dict[str, tuple[str, str | None]]:
    """DequantizeLinear output -> (quantized initializer, zero-point initializer or None, axis)."""
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            zp = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX default: 1
            out[node.output[0]] = (node.input[0], zp, axis)
    return out


def weights(model: onnx.ModelProto) -> list[WeightInfo]:
    """The weight tensor of every Conv/Gemm/MatMul-like node that has one as an initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    dq = _dequant_sources(model, inits)
    found = []
    for node in model.graph.node:
        idx = WEIGHT_INPUT.get(node.op_type)
        if idx is None or len(node.input) <= idx:
            continue
        name = node.input[idx]
        if name in dq:
            q, zp, axis = dq[name]
            zp_arr = numpy_helper.to_array(inits[zp]) if zp else np.zeros(1, dtype=np.int8)
            found.append(WeightInfo(node, numpy_helper.to_array(inits[q]), zp_arr, True, axis))
        elif name in inits:
            arr = numpy_helper.to_array(inits[name])
            if node.op_type in WEIGHT_ZP_INPUT:
                zi = WEIGHT_ZP_INPUT[node.op_type]
                zp = node.input[zi] if len(node.input) > zi and node.input[zi] in inits else None
                zp_arr = numpy_helper.to_array(inits[zp]) if zp else np.zeros(1, dtype=arr.dtype)
                axis = 1 if "MatMul" in node.op_type else 0  # per-column for [K, N] matmul weights
                found.append(WeightInfo(node, arr, zp_arr, True, axis))
            elif arr.ndim >= 2 and arr.dtype.kind == "f":
                found.append(WeightInfo(node, arr, None, False))
    return found


def _parameters(model: onnx.ModelProto) -> int:
    """Elements of all initializers except Q/DQ scales and zero points and shape constants."""
    qparams = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qparams.update(node.input[1:])
        elif node.op_type in WEIGHT_ZP_INPUT or node.op_type.startswith("QLinear"):
            qparams.update(
                n for i, n in enumerate(node.input) if i not in (0, WEIGHT_INPUT.get(node.op_type, -1))
            )
    total = 0
    for t in model.graph.initializer:
        if t.name in qparams or t.data_type == onnx.TensorProto.INT64:
            continue
        total += int(np.prod(t.dims)) if t.dims else 1
    return total


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of the graph's tensors: onnxruntime's symbolic shape inference (it resolves
    the Reshape shapes a transformer computes from Shape ops, which ONNX's leaves unknown and
    so left MiniLM's encoder MatMuls uncounted), else ONNX's."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:
        inferred = None
    try:
        inferred = inferred or onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def count_macs(model: onnx.ModelProto) -> int | None:
    """Multiply-accumulates per sample of Conv/Gemm/MatMul-like nodes (None if shapes unknown)."""
    shapes = _shapes(model)
    if not shapes:
        return None
    inits = {t.name for t in model.graph.initializer}
    # the batch is the graph input's first dimension: a layer's own first output dimension is
    # not (a transformer's weight MatMul run as Gemm on [batch * tokens, hidden] rows)
    inputs = [shapes[i.name] for i in model.graph.input if i.name not in inits and shapes.get(i.name)]
    batch = inputs[0][0] if inputs else None
    total = 0
    for w in weights(model):
        out = shapes.get(w.node.output[0])
        if out is None:
            continue
        batch = batch or (out[0] if out else 1)
        if w.node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            per_output = int(np.prod(w.values.shape[1:]))  # Cin/groups * kernel
            total += int(np.prod(out)) * per_output
        else:
            k = w.values.shape[0] if w.node.op_type != "Gemm" or not _trans_b(w.node) else w.values.shape[1]
            total += int(np.prod(out)) * int(k)
    if batch is None:
        return None
    return total // max(1, batch)


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def layer_sparsity(path: Path) -> list[LayerReport]:
    """Per prunable layer: parameters, fraction of zero weights, whether the weight is INT8."""
    model = onnx.load(str(path))
    layers = []
    for w in weights(model):
        params = int(w.values.size)
        layers.append(
            LayerReport(
                name=w.node.name or w.node.output[0],
                op_type=w.node.op_type,
                parameters=params,
                sparsity=round(w.zeros / params, 6) if params else 0.0,
                quantized=w.quantized,
            )
        )
    return layers


def _model_files(path: Path, model: onnx.ModelProto) -> list[Path]:
    """The .onnx file plus any external-data files its initializers point to."""
    external = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return [path] + [path.parent / name for name in sorted(external)]


def model_stats(path: Path) -> ModelStats:
    """File size, gzip size, parameters, sparsity over prunable layers, MACs per sample.

    Sizes count external-data files too (torch writes large weights next to the .onnx)."""
    path = Path(path)
    files = _model_files(path, onnx.load(str(path), load_external_data=False))
    model = onnx.load(str(path), load_external_data=True)
    ws = weights(model)
    total = sum(int(w.values.size) for w in ws)
    zeros = sum(w.zeros for w in ws)
    raws = [f.read_bytes() for f in files]
    return ModelStats(
        file_size_bytes=sum(len(raw) for raw in raws),
        compressed_size_bytes=sum(len(gzip.compress(raw, compresslevel=6)) for raw in raws),
        parameters=_parameters(model),
        sparsity=round(zeros / total, 6) if total else 0.0,
        flops=count_macs(model),
    )
