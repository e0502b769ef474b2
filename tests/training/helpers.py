"""ONNX inspection helpers for the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def resolved_weight(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """A weight as the runtime sees it: an initializer, or DequantizeLinear(initializer)."""
    inits = _initializers(model)
    if name in inits:
        return inits[name].astype(np.float32)
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(name)
    while node is not None and node.op_type in ("Identity", "Transpose", "Reshape"):
        name = node.input[0]
        if name in inits:
            return inits[name].astype(np.float32)
        node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
        q = inits[node.input[0]].astype(np.float32)
        scale = inits[node.input[1]]
        zp = (
            inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] in inits else 0.0
        )
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if np.ndim(zp) == 1 else zp
        return (q - zp) * scale
    return None


def conv_weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [
        resolved_weight(model, n.input[1])
        for n in model.graph.node
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv")
    ]


def conv_macs(path: Path) -> int:
    """Multiply-accumulates of all Conv nodes for batch 1 (from shape inference)."""
    model = onnx.load(str(path))
    for inp in model.graph.input:
        dim = inp.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output})
    total = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        w = resolved_weight(model, node.input[1])
        out = shapes.get(node.output[0])
        assert w is not None and out, f"cannot size {node.name}"
        total += int(np.prod(w.shape)) * int(np.prod(out[2:]))
    return total
