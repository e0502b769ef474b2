"""Channel dependency groups of an ONNX graph and the surgery that removes whole channels.

A *group* is a producer layer (Conv with ``group=1``, Gemm, or MatMul with a 2-D constant
weight) whose output channels can be removed without changing any other tensor's meaning:
following the output forward, every path must go through channel-wise ops (activations,
BatchNormalization, per-channel or scalar constant Add/Mul/Sub/Div, pooling, depthwise
convs, ``Flatten`` after a global pool, ``Concat`` on the channel axis, ``x * f(x)`` with
both sides from the same group) and end in layers that *read* the channels as inputs
(Conv ``group=1``, Gemm, MatMul), whose matching input channels are removed with them.
A path that reaches a graph output, a residual ``Add`` of two different producers, a
reshape or an attention-style op makes the group not removable (reported with the node):
residual-coupled channels are left alone in this version, which keeps ResNet's
bottleneck inner convs (most of its MACs) and MobileNetV2's expansion channels free.

:func:`remove_channels` applies the removals of all groups at once (positions are those of
the input model, so groups meeting at a Concat compose) and returns a shape-inferred model
that ``onnx.checker`` accepts, with the same input/output names and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .capture import initializer_map, node_inputs

_UNARY = {
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Tanh",
    "Softplus", "Gelu", "Identity", "Dropout", "Neg", "Abs", "Erf", "Sqrt", "Cast",
}  # fmt: skip
_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
_BINARY = {"Add", "Mul", "Sub", "Div", "PRelu"}


@dataclass(frozen=True)
class Slice:
    """Initializer ``init`` loses, for root channel ``j``, the indices
    ``(offset + j) * block + b`` (b < block) along ``axis``."""

    init: str
    axis: int
    offset: int = 0
    block: int = 1

    def indices(self, channels: np.ndarray) -> np.ndarray:
        base = (self.offset + np.asarray(channels, dtype=np.int64)) * self.block
        return (base[:, None] + np.arange(self.block)[None, :]).reshape(-1)


@dataclass(frozen=True)
class ConsumerRef:
    """A layer reading the group's channels: root channel ``j`` is its input positions
    ``(offset + j) * block + b``; each position is ``per_position`` matrix columns
    (``Cin/groups * prod(kernel)`` order, so a 3x3 conv has 9)."""

    node_index: int
    name: str
    offset: int
    block: int
    per_position: int
    inputs: int  # input positions of the consumer in all (Conv: Cin, Gemm/MatMul: K)

    def columns(self, channels: np.ndarray) -> np.ndarray:
        pos = ((self.offset + np.asarray(channels, dtype=np.int64)) * self.block)[:, None] + np.arange(
            self.block
        )[None, :]
        cols = pos.reshape(-1, 1) * self.per_position + np.arange(self.per_position)[None, :]
        return cols.reshape(len(channels), -1)


@dataclass
class ChannelGroup:
    root: str
    root_index: int
    channels: int
    slices: list[Slice] = field(default_factory=list)
    consumers: list[ConsumerRef] = field(default_factory=list)
    depthwise: list[int] = field(default_factory=list)  # node indices whose ``group`` shrinks
    members: list[int] = field(default_factory=list)  # root, depthwise convs and consumers


@dataclass
class GroupScan:
    groups: list[ChannelGroup]
    blocked: dict[str, str]  # root name -> why its channels stay


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def node_label(node: onnx.NodeProto, idx: int) -> str:
    return node.name or f"{node.op_type}_{idx}"


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.inits = initializer_map(model)
        self.shapes = inferred_shapes(model)
        self.outputs = {o.name for o in model.graph.output}
        self.consumers: dict[str, list[int]] = {}
        self.uses: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node_inputs(node):
                self.consumers.setdefault(name, []).append(i)
                self.uses[name] = self.uses.get(name, 0) + 1

    def own_init(self, name: str) -> bool:
        return name in self.inits and self.uses.get(name, 0) == 1

    def root_out_axis(self, node: onnx.NodeProto) -> tuple[int, int] | str:
        """(weight axis indexing the output channels, channel count) or why it is no root."""
        if len(node.input) < 2 or not self.own_init(node.input[1]) or node.input[0] in self.inits:
            return "weight is not an initializer of its own"
        w = self.inits[node.input[1]]
        dims = [int(d) for d in w.dims]
        if onnx.helper.tensor_dtype_to_np_dtype(w.data_type).kind != "f":
            return "weight is not float"
        a = _attrs(node)
        if node.op_type == "Conv":
            if int(a.get("group", 1)) != 1:
                return "grouped/depthwise conv (its channels follow its input's producer)"
            return 0, dims[0]
        if len(dims) != 2:
            return "weight is not 2-D"
        if node.op_type == "Gemm":
            return (0, dims[0]) if a.get("transB", 0) else (1, dims[1])
        return 1, dims[1]


def own_parameters(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every layer parameter is an initializer of its own.

    The torch exporter deduplicates equal initializers (e.g. the all-zero folded biases of
    a freshly initialized network) and feeds them through ``Identity`` nodes; channels of
    one layer could then not be removed without touching another. Identity-of-initializer
    nodes become initializers, and a parameter read by several nodes is copied per reader
    (graph inputs and the function are unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = initializer_map(out)
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.input[0] in inits
            and node.output[0] not in outputs
            and node.domain in ("", "ai.onnx")
        ):
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            graph.initializer.append(t)
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    inits = initializer_map(out)
    seen: set[str] = set()
    taken = set(inits) | {o for n in graph.node for o in n.output}
    for idx, node in enumerate(graph.node):
        for k, name in enumerate(node.input):
            if name not in inits or k == 0 and node.op_type in ("Conv", "Gemm", "MatMul"):
                continue
            if name not in seen:
                seen.add(name)
                continue
            copy_name = f"{name}__{idx}_{k}"
            while copy_name in taken:
                copy_name += "_"
            taken.add(copy_name)
            t = onnx.TensorProto()
            t.CopyFrom(inits[name])
            t.name = copy_name
            graph.initializer.append(t)
            node.input[k] = copy_name
    # drop initializers nothing reads any more
    used = {n for node in graph.node for n in node_inputs(node)} | outputs
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def find_groups(model: onnx.ModelProto) -> GroupScan:
    """Every removable channel group of the main graph, and why the other producers are not."""
    g = _Graph(model)
    groups: list[ChannelGroup] = []
    blocked: dict[str, str] = {}
    for idx, node in enumerate(g.nodes):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        name = node_label(node, idx)
        axis = g.root_out_axis(node)
        if isinstance(axis, str):
            depthwise = node.op_type == "Conv" and int(_attrs(node).get("group", 1)) > 1
            if node.input[1:2] and node.input[1] in g.inits and not depthwise:
                blocked[name] = axis
            continue
        grp = _trace(g, idx, node, name, *axis)
        if isinstance(grp, str):
            blocked[name] = grp
        else:
            groups.append(grp)
    return GroupScan(groups, blocked)


def _trace(g: _Graph, idx: int, node: onnx.NodeProto, name: str, w_axis: int, channels: int):
    out = node.output[0]
    shape = g.shapes.get(out)
    if shape is None:
        return "output shape unknown (run shape inference / static shapes)"
    grp = ChannelGroup(name, idx, channels, members=[idx])
    grp.slices.append(Slice(node.input[1], w_axis))
    if len(node.input) > 2 and node.input[2]:
        bias = node.input[2]
        if not g.own_init(bias):
            return "bias is not an initializer of its own"
        bdims = [int(d) for d in g.inits[bias].dims]
        if bdims and bdims[-1] == channels:
            grp.slices.append(Slice(bias, len(bdims) - 1))
        elif int(np.prod(bdims or [1])) != 1:
            return "bias shape does not broadcast per channel"
    axis = 1 if node.op_type == "Conv" else len(shape) - 1
    # tensor -> (channel axis, offset, block); block > 1 only after Flatten
    tracked: dict[str, tuple[int, int, int]] = {out: (axis, 0, 1)}
    work = [out]
    pending: set[int] = set()
    done: set[int] = set()
    while work or pending:
        progressed = False
        while work:
            tensor = work.pop()
            if tensor in g.outputs:
                return f"channels reach the graph output {tensor!r}"
            for ci in g.consumers.get(tensor, []):
                if ci in done:
                    continue
                res = _step(g, grp, ci, tensor, tracked)
                if res == "pending":
                    pending.add(ci)
                    continue
                if isinstance(res, str):
                    return res
                done.add(ci)
                pending.discard(ci)
                progressed = True
                for t, m in res:
                    if t in tracked and tracked[t] != m:
                        return f"tensor {t!r} is reached with two different channel layouts"
                    if t not in tracked:
                        tracked[t] = m
                        work.append(t)
        if pending:
            for ci in sorted(pending):
                res = _step(g, grp, ci, None, tracked)
                if res == "pending":
                    continue
                if isinstance(res, str):
                    return res
                pending.discard(ci)
                done.add(ci)
                progressed = True
                for t, m in res:
                    if t not in tracked:
                        tracked[t] = m
                        work.append(t)
            if not progressed and not work:
                n = g.nodes[min(pending)]
                return (
                    f"coupled with other channels at {n.op_type} {node_label(n, min(pending))!r} "
                    "(residual add or mixing op): left alone"
                )
    if not grp.consumers:
        return "no layer reads these channels"
    return grp


def _step(g: _Graph, grp: ChannelGroup, ci: int, tensor: str | None, tracked: dict):
    """Follow one consumer: list of (output tensor, layout) to keep tracing, [] if terminal,
    "pending" (binary op waiting for its other side) or a reason string (not removable)."""
    node = g.nodes[ci]
    op = node.op_type
    label = f"{op} {node_label(node, ci)!r}"
    ins = list(node.input)
    if tensor is None:
        tensor = next(t for t in ins if t in tracked)
    axis, offset, block = tracked[tensor]
    layout = (axis, offset, block)
    shape = g.shapes.get(tensor)
    if shape is None:
        return f"shape of {tensor!r} unknown"
    rank = len(shape)
    a = _attrs(node)
    if node.domain not in ("", "ai.onnx"):
        return f"feeds custom-domain op {label}"
    if op in _UNARY:
        if any(t in tracked or t in g.inits for t in ins[1:] if t) and op != "Clip":
            return f"{label} has extra inputs"
        return [(node.output[0], layout)]
    if op in _POOL:
        if axis != 1 or block != 1:
            return f"{label} pools over the channel axis"
        return [(node.output[0], layout)]
    if op == "BatchNormalization":
        if axis != 1 or block != 1 or ins[0] != tensor:
            return f"{label} normalizes another axis"
        for p in ins[1:5]:
            if not g.own_init(p):
                return f"{label} parameter {p!r} is not an initializer of its own"
            grp.slices.append(Slice(p, 0, offset))
        return [(node.output[0], layout)]
    if op == "ReduceMean" and len(ins) == 1:
        axes = [x % rank for x in a.get("axes", [])]
        if not axes or axis in axes or (not a.get("keepdims", 1) and any(x < axis for x in axes)):
            return f"{label} reduces the channel axis"
        return [(node.output[0], layout)]
    if op == "Flatten":
        if int(a.get("axis", 1)) != 1 or axis != 1 or ins[0] != tensor:
            return f"{label} flattens across the channel axis"
        hw = int(np.prod(shape[2:])) if rank > 2 else 1
        return [(node.output[0], (1, offset, block * hw))]
    if op == "Concat":
        cat_axis = int(a.get("axis", 0)) % rank
        if cat_axis != axis or block != 1:
            return f"{label} concatenates along another axis"
        outs = []
        before = 0
        for t in ins:
            if t == tensor:
                outs.append((node.output[0], (axis, offset + before, 1)))
                break
            s = g.shapes.get(t)
            if s is None:
                return f"{label}: shape of input {t!r} unknown"
            before += s[axis]
        if ins.count(tensor) > 1:
            return f"{label} repeats the same input"
        return outs
    if op in _BINARY:
        others = [t for t in ins if t != tensor]
        if len(ins) != 2 or len(others) != 1:
            return f"{label} combines a tensor with itself"
        other = others[0]
        if other in g.inits:
            cdims = [int(d) for d in g.inits[other].dims]
            if len(cdims) > rank:
                return f"{label} constant broadcasts up"
            k = axis - (rank - len(cdims))
            if k >= 0 and cdims[k] != 1:  # per-channel constant: sliced with the channels
                if block != 1 or any(d != 1 for i, d in enumerate(cdims) if i != k):
                    return f"{label} constant is not per channel"
                if not g.own_init(other):
                    return f"{label} per-channel constant {other!r} is shared"
                grp.slices.append(Slice(other, k, offset))
            return [(node.output[0], layout)]
        if other not in tracked:
            return "pending"
        if tracked[other] != layout:
            return f"{label} mixes channels of different layouts"
        return [(node.output[0], layout)]
    if op == "Conv" and ins[0] == tensor:
        groups = int(a.get("group", 1))
        w = ins[1] if len(ins) > 1 else ""
        if not g.own_init(w) or axis != 1 or block != 1:
            return f"{label} weight is not an initializer of its own"
        wdims = [int(d) for d in g.inits[w].dims]
        if groups == 1:
            grp.consumers.append(
                ConsumerRef(ci, node_label(node, ci), offset, 1, int(np.prod(wdims[2:])), wdims[1])
            )
            grp.slices.append(Slice(w, 1, offset))
            grp.members.append(ci)
            return []
        if groups == shape[1] and wdims[0] == groups and wdims[1] == 1:  # depthwise, multiplier 1
            grp.slices.append(Slice(w, 0, offset))
            if len(ins) > 2 and ins[2]:
                if not g.own_init(ins[2]):
                    return f"{label} bias is shared"
                grp.slices.append(Slice(ins[2], 0, offset))
            grp.depthwise.append(ci)
            grp.members.append(ci)
            return [(node.output[0], layout)]
        return f"feeds grouped conv {label} (groups={groups})"
    if op in ("Gemm", "MatMul") and ins[0] == tensor:
        w = ins[1]
        if not g.own_init(w) or axis != rank - 1:
            return f"{label} weight is not an initializer of its own"
        wdims = [int(d) for d in g.inits[w].dims]
        if len(wdims) != 2 or (op == "Gemm" and (a.get("transA", 0) or rank != 2)):
            return f"{label} layout not supported"
        w_axis = 1 if op == "Gemm" and a.get("transB", 0) else 0
        grp.consumers.append(ConsumerRef(ci, node_label(node, ci), offset, block, 1, wdims[w_axis]))
        grp.slices.append(Slice(w, w_axis, offset, block))
        grp.members.append(ci)
        return []
    return f"feeds {label}, which mixes channels: left alone"


@dataclass
class Removal:
    """Root channels removed per group (indices into the input model's channels)."""

    group: ChannelGroup
    channels: np.ndarray
    error: float = 0.0  # relative calibration output error of the consumers


def remove_channels(model: onnx.ModelProto, removals: list[Removal]) -> onnx.ModelProto:
    """A copy of ``model`` without the given channels, shape-inferred and checked."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    drop: dict[tuple[str, int], set[int]] = {}
    depthwise: set[int] = set()
    for r in removals:
        if len(r.channels) == 0:
            continue
        if len(r.channels) >= r.group.channels:
            raise ValueError(f"cannot remove all {r.group.channels} channels of {r.group.root}")
        for s in r.group.slices:
            drop.setdefault((s.init, s.axis), set()).update(s.indices(r.channels).tolist())
        depthwise.update(r.group.depthwise)
    inits = initializer_map(out)
    new: dict[str, np.ndarray] = {}
    for (name, axis), idx in drop.items():
        arr = new.get(name)
        if arr is None:
            arr = numpy_helper.to_array(inits[name])
        new[name] = np.delete(arr, sorted(idx), axis=axis)
    for i, t in enumerate(out.graph.initializer):
        if t.name in new:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(new[t.name], t.name))
    inits = initializer_map(out)
    for i in depthwise:
        node = out.graph.node[i]
        channels = int(inits[node.input[1]].dims[0])
        for attr in node.attribute:
            if attr.name == "group":
                attr.i = channels
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    onnx.checker.check_model(out)
    return out


def zero_channels(model: onnx.ModelProto, removals: list[Removal]) -> onnx.ModelProto:
    """Same graph, but every slice of the removed channels set to zero (for tests: a model
    whose removed channels are exactly zero computes what the sliced model computes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializer_map(out)
    arrays: dict[str, np.ndarray] = {}
    for r in removals:
        for s in r.group.slices:
            arr = arrays.setdefault(s.init, numpy_helper.to_array(inits[s.init]).copy())
            index = [slice(None)] * arr.ndim
            index[s.axis] = s.indices(r.channels)
            arr[tuple(index)] = 0
    for i, t in enumerate(out.graph.initializer):
        if t.name in arrays:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))
    return out
