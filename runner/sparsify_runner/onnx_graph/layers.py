"""Prunable layers of an ONNX graph: which Conv / Gemm / MatMul weights can be changed (a float
initializer used by that node alone), each layer's role (first / depthwise / classifier /
normal) and its capture wave (1 + the latest wave among the changed layers upstream), so
layers of one wave are independent and can be captured together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..kernels.hessian import InputSpec
from .capture import initializer_map, node_inputs

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


@dataclass
class PrunableLayer:
    name: str
    op_type: str
    node_index: int
    data_input: str
    weight_name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    spec: InputSpec
    transposed: bool = False  # weight stored (in, out): MatMul, Gemm transB=0
    role: str = "normal"
    wave: int = 0

    @property
    def params(self) -> int:
        return int(np.prod(self.shape))

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """Stored weight -> (groups, rows, cols) float32."""
        w = w.astype(np.float32)
        if self.op_type == "Conv":
            g = self.spec.groups
            return w.reshape(g, self.shape[0] // g, -1)
        return (w.T if self.transposed else w)[None]

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        out = m.reshape(self.shape) if self.op_type == "Conv" else m[0].T if self.transposed else m[0]
        return np.ascontiguousarray(out).astype(self.dtype)


@dataclass
class _Skipped:
    name: str
    op_type: str
    params: int
    sparsity: float
    note: str


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node_inputs(node):
            counts[name] = counts.get(name, 0) + 1
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _conv_spec(node: onnx.NodeProto, shape: tuple[int, ...]) -> InputSpec | str:
    a = _attrs(node)
    nd = len(shape) - 2
    if nd not in (1, 2):
        return f"{nd}-D convolution is not supported"
    groups = int(a.get("group", 1))
    kernel = tuple(int(k) for k in shape[2:])
    strides = tuple(a.get("strides", [1] * nd))
    dil = tuple(a.get("dilations", [1] * nd))
    pads = tuple(a.get("pads", [0] * (2 * nd)))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if nd == 1:
        kernel, strides, dil = (1, kernel[0]), (1, strides[0]), (1, dil[0])
        pads = (0, pads[0], 0, pads[1])
    return InputSpec(
        kind="conv",
        cols=int(np.prod(shape[1:])),
        groups=groups,
        kernel=kernel,  # type: ignore[arg-type]
        stride=strides,  # type: ignore[arg-type]
        dilation=dil,  # type: ignore[arg-type]
        pads=pads,  # type: ignore[arg-type]
        auto_pad=auto_pad,
        conv_1d=nd == 1,
    )


def find_layers(model: onnx.ModelProto) -> tuple[list[PrunableLayer], list[_Skipped]]:
    """Prunable Conv/Gemm/MatMul layers of the main graph, and the ones skipped with why."""
    graph = model.graph
    inits = initializer_map(model)
    uses = _use_counts(graph)
    producers = {o: n for n in graph.node for o in n.output}
    constant = set(inits)  # tensors computed from constants only (e.g. Transpose(initializer))
    for node in graph.node:
        if all(n in constant for n in node_inputs(node)):
            constant.update(o for o in node.output if o)
    layers: list[PrunableLayer] = []
    skipped: list[_Skipped] = []
    for idx, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 2:
            continue
        wname = node.input[1]
        label = node.name or f"{node.op_type}({wname})"
        if wname not in inits:
            if wname not in constant:
                continue  # activation x activation (attention scores, dynamic weights): not a weight layer
            src = producers.get(wname)
            how = f"computed by a {src.op_type} node" if src is not None else "unknown source"
            skipped.append(
                _Skipped(label, node.op_type, 0, 0.0, f"skipped: weight is not an initializer ({how})")
            )
            continue
        tensor = inits[wname]
        shape = tuple(int(d) for d in tensor.dims)
        params = int(np.prod(shape)) if shape else 1
        arr_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)

        def skip(note: str, *, _l=label, _op=node.op_type, _p=params, _t=tensor) -> None:
            try:
                arr = numpy_helper.to_array(_t)
                sp = float((arr == 0).mean()) if arr.size else 0.0
            except Exception:  # noqa: BLE001 - only for the report
                sp = 0.0
            skipped.append(_Skipped(_l, _op, _p, sp, f"skipped: {note}"))

        if uses.get(wname, 0) > 1:
            skip(f"weight {wname!r} is shared by {uses[wname]} uses")
            continue
        if arr_dtype not in _FLOAT_TYPES:
            skip(f"weight dtype {arr_dtype} is not float")
            continue
        if node.input[0] in inits:
            skip("data input is a constant")
            continue
        a = _attrs(node)
        if node.op_type == "Conv":
            spec = _conv_spec(node, shape)
            if isinstance(spec, str):
                skip(spec)
                continue
            transposed = False
        elif node.op_type == "Gemm":
            if len(shape) != 2:
                skip("Gemm weight is not 2-D")
                continue
            transposed = not bool(a.get("transB", 0))
            k = shape[0] if transposed else shape[1]
            spec = InputSpec(kind="linear", cols=k, trans_a=bool(a.get("transA", 0)))
        else:
            if len(shape) != 2:
                skip(f"MatMul weight has rank {len(shape)} (only 2-D weights are pruned)")
                continue
            transposed = True
            spec = InputSpec(kind="linear", cols=shape[0])
        layers.append(
            PrunableLayer(
                name=label,
                op_type=node.op_type,
                node_index=idx,
                data_input=node.input[0],
                weight_name=wname,
                shape=shape,
                dtype=np.dtype(arr_dtype),
                spec=spec,
                transposed=transposed,
            )
        )
    return layers, skipped


def _is_depthwise(layer: PrunableLayer) -> bool:
    return layer.op_type == "Conv" and layer.spec.groups > 1 and layer.shape[1] == 1


def assign_roles_and_waves(model: onnx.ModelProto, layers: list[PrunableLayer], pruned: set[str]) -> None:
    """Roles from the graph, waves from the dependencies between layers in ``pruned``.

    ``depth[t]`` = number of sequential pruned-layer steps needed to compute tensor t.
    ``upstream[t]`` / reaching the outputs tell first and last (classifier) layers apart.
    """
    graph = model.graph
    by_node = {layer.node_index: layer for layer in layers}
    depth: dict[str, int] = {}
    upstream: dict[str, bool] = {}  # any prunable layer upstream of the tensor
    for idx, node in enumerate(graph.node):
        ins = node_inputs(node)
        layer = by_node.get(idx)
        if layer is not None:
            data = layer.data_input
            layer.wave = depth.get(data, 0)
            layer.role = "normal" if upstream.get(data, False) else "first"
            if _is_depthwise(layer) and layer.role == "normal":
                layer.role = "depthwise"
            d = max([depth.get(n, 0) for n in ins] + [layer.wave + (1 if layer.name in pruned else 0)])
            up = True
        else:
            d = max((depth.get(n, 0) for n in ins), default=0)
            up = any(upstream.get(n, False) for n in ins)
        for out in node.output:
            depth[out] = d
            upstream[out] = up
    # classifier: no prunable layer downstream of its output
    downstream: dict[str, bool] = {}
    for idx in range(len(graph.node) - 1, -1, -1):
        node = graph.node[idx]
        layer = by_node.get(idx)
        below = any(downstream.get(o, False) for o in node.output)
        if layer is not None and not below and layer.role == "normal":
            layer.role = "classifier"
        for name in node_inputs(node):
            downstream[name] = downstream.get(name, False) or below or layer is not None
