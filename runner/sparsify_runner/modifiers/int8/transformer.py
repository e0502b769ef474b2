"""INT8 for transformer encoders (BERT, MiniLM, ViT, ...): what to quantize, and two exact
FP32 rewrites of the graph that static INT8 needs. Quantizing every op collapses them (the
attention-mask Add's -3.4e38 constant, outlier dimensions in the weight-layer outputs, a
quantized residual stream); docs/one-shot.md "INT8 on transformers" has the measurements.

What this module provides (``prepare`` and the candidate builder call it; everything is
detected by structure, never by model name):

* :func:`has_attention`: a ``Softmax`` with a MatMul of two activations (Q K^T) a few
  scaling/masking ops above it, next to weight MatMuls/Gemms; or a fused onnxruntime attention
  op. A CNN classifier ending in Gemm + Softmax is not one.
* :func:`clamp_attention_masks`: huge negative constants (<= -1e5, -inf included) that reach a
  Softmax only through mask-building ops become -1e4 (BERT's original constant):
  ``exp(-1e4)`` underflows to exactly 0 in float32, so the softmax is unchanged for any row
  with one unmasked key (a row with *every* key masked was uniform and becomes the softmax of
  the raw scores). It keeps calibrators (histograms, Percentile/Entropy) and any op that does
  get quantized away from 3.4e38; alone it does not fix INT8 (see 1.).
* :func:`weight_matmuls_to_gemm`: every weight MatMul (and its bias Add) with a known N-d
  input shape (one dynamic batch dimension allowed) becomes ``Reshape -> Gemm -> Reshape``,
  the arithmetic onnxruntime runs anyway (outputs bit-identical on the MiniLM model). Static
  INT8 runs a Gemm with a float output as ``QGemm`` at INT8 speed; a MatMul whose output
  stays float does not fuse (DequantizeLinear + float MatMul): 1.2x instead of 2.1x here.
* :func:`quant_scope`: what ``quantize_static`` gets for such a graph: ``op_types_to_quantize``
  = the weight layers (MatMul, Gemm), the activation x activation MatMuls (Q K^T, P V)
  in FP32 (quantizing them too: 0.982 and no faster), and
  ``OpTypesToExcludeOutputQuantization`` = MatMul, Gemm (outputs in float). Result: cosine
  0.987, agreement 0.992, accuracy 0.830 (FP32 0.830), 2.06x FP32 at batch 1 (2 cores).
* :func:`quantize_dynamic_int8`: ``quantize_dynamic`` of the MatMul/Gemm weights, per-channel
  (the usual CPU recipe for BERT): cosine 0.992, agreement 0.994, accuracy 0.828, 2.0x; no
  calibration. Also the transformer candidate for ``--quant-format qoperator``, where
  ``OpTypesToExcludeOutputQuantization`` has no effect (static QOperator: cosine 0.915).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MASK_FLOOR = -1e4
"""What a huge negative mask constant becomes: exp(-1e4 - max score) is exactly 0 in float32."""
HUGE_NEGATIVE = -1e5
"""A float constant with a value at or below this (or -inf) that reaches a Softmax is a mask."""
MASK_PATH_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Where",
        "Cast",
        "Expand",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Transpose",
        "Slice",
        "Concat",
        "Tile",
        "Identity",
        "ConstantOfShape",
    }
)
"""Ops a mask passes through on its way to the scores (building, broadcasting, adding it)."""
SCORE_PATH_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Reshape", "Transpose", "Cast", "Identity"})
"""Ops between Q K^T and its Softmax (scaling, bias/mask addition, head reshapes)."""
FUSED_ATTENTION_OPS = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"})
WEIGHT_OP_TYPES = ["MatMul", "Gemm"]
"""What a transformer quantizes: its weight layers (a ViT's one patch-embedding Conv stays FP32:
its output is the residual stream, which INT8 outputs would clip)."""


def _constants(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def attention_softmaxes(model: onnx.ModelProto, max_hops: int = 6) -> list[onnx.NodeProto]:
    """Softmax nodes fed (within ``max_hops`` scaling / masking / reshaping ops) by a MatMul
    of two activations: the attention probabilities of Q K^T."""
    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for sm in model.graph.node:
        if sm.op_type != "Softmax":
            continue
        frontier, seen, hit = [(sm.input[0], 0)], set(), False
        while frontier and not hit:
            name, depth = frontier.pop()
            node = producer.get(name)
            if node is None or node.name in seen or depth > max_hops:
                continue
            seen.add(node.name or name)
            if node.op_type == "MatMul" and all(i not in consts for i in node.input[:2]):
                hit = True
            elif node.op_type in SCORE_PATH_OPS:
                frontier.extend((i, depth + 1) for i in node.input if i and i not in consts)
        if hit:
            found.append(sm)
    return found


def has_attention(model: onnx.ModelProto) -> bool:
    """A transformer-like graph: fused attention ops, or attention softmaxes next to weight
    MatMuls/Gemms (a CNN classifier ending in Gemm + Softmax is not one)."""
    if any(n.op_type in FUSED_ATTENTION_OPS for n in model.graph.node):
        return True
    inits = {i.name for i in model.graph.initializer}
    weight_layers = sum(
        1
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    )
    return weight_layers >= 2 and bool(attention_softmaxes(model))


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes without a constant operand (attention's Q K^T and P V)."""
    consts = _constants(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and not any(i in consts for i in n.input[:2])
    ]


@dataclass(frozen=True)
class QuantScope:
    """What ``quantize_static`` quantizes in a graph."""

    op_types: list[str] | None = None
    """``op_types_to_quantize`` (None: every op onnxruntime supports, the default)."""
    fp32_nodes: list[str] = field(default_factory=list)
    """Nodes every candidate keeps in FP32, on top of its own ``nodes_to_exclude``."""
    extra_options: dict = field(default_factory=dict)
    """Entries to merge into ``quantize_static``'s ``extra_options``."""
    transformer: bool = False

    def note(self) -> str | None:
        if not self.transformer:
            return None
        return (
            "INT8 (transformer graph): only the weight layers are quantized, their outputs stay in "
            f"float; attention's {len(self.fp32_nodes)} activation x activation MatMul(s), the "
            "mask Add, Softmax, LayerNorm and GELU run in FP32"
        )


def quant_scope(model: onnx.ModelProto) -> QuantScope:
    """The default scope for a graph without attention; for a transformer, the weight layers
    only (``WEIGHT_OP_TYPES``), Q K^T / P V in FP32 and the weight layers' outputs in float."""
    if not has_attention(model):
        return QuantScope()
    return QuantScope(
        op_types=list(WEIGHT_OP_TYPES),
        fp32_nodes=activation_matmuls(model),
        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
        transformer=True,
    )


def quantizable_op_types(model: onnx.ModelProto) -> list[str] | None:
    """``op_types_to_quantize`` for ``quantize_static``: the weight layers for a graph with
    attention, None (every supported op) otherwise."""
    return quant_scope(model).op_types


def quantize_dynamic_int8(
    source: Path,
    out: Path,
    *,
    per_channel: bool = True,
    reduce_range: bool = False,
    exclude: list[str] | None = None,
) -> Path:
    """``quantize_dynamic`` of the MatMul/Gemm weights (s8, per-channel by default):
    activations are quantized per call from their own range (``DynamicQuantizeMatMul`` /
    ``MatMulIntegerToFloat``), outputs stay float, no calibration. The embeddings ``Gather``
    stays FP32 (quantizing it saves memory, not time). ``exclude``: node names of ``source``
    kept in FP32 (Gemms included)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(out),
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        # quantize_dynamic turns each Gemm into a MatMul named "<gemm>_MatMul" before it looks
        # at nodes_to_exclude: name both
        nodes_to_exclude=[x for name in exclude or [] for x in (name, f"{name}_MatMul")],
        extra_options={"MatMulConstBOnly": True},
    )
    return Path(out)


def _huge_negative(arr: np.ndarray) -> bool:
    return arr.dtype.kind == "f" and arr.size > 0 and bool(np.any(arr <= HUGE_NEGATIVE))


def _reaches_softmax(model: onnx.ModelProto, start: str) -> bool:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    queue, seen = deque([start]), {start}
    while queue:
        name = queue.popleft()
        for node in consumers.get(name, []):
            if node.op_type == "Softmax":
                return True
            if node.op_type not in MASK_PATH_OPS:
                continue
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    queue.append(out)
    return False


def clamp_attention_masks(model: onnx.ModelProto) -> int:
    """Replace, in place, every huge negative value (<= -1e5 or -inf) of a float constant
    (initializer, ``Constant``, ``ConstantOfShape`` value) that reaches a Softmax only through
    mask-building ops (``MASK_PATH_OPS``) by ``MASK_FLOOR``. Exact after the softmax for any
    row with at least one unmasked key. Returns the number of constants rewritten."""
    changed = 0

    def clamp(arr: np.ndarray) -> np.ndarray:
        out = arr.copy()
        out[out <= HUGE_NEGATIVE] = MASK_FLOOR
        return out

    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        if int(np.prod(init.dims)) > 1 << 20:  # a weight, not a mask constant
            continue
        arr = numpy_helper.to_array(init)
        if _huge_negative(arr) and _reaches_softmax(model, init.name):
            init.CopyFrom(numpy_helper.from_array(clamp(arr), init.name))
            changed += 1
    for node in model.graph.node:
        if node.op_type not in ("Constant", "ConstantOfShape") or not node.output:
            continue
        for attr in node.attribute:
            if attr.name != "value" or attr.type != onnx.AttributeProto.TENSOR:
                continue
            arr = numpy_helper.to_array(attr.t)
            if _huge_negative(arr) and _reaches_softmax(model, node.output[0]):
                attr.t.CopyFrom(numpy_helper.from_array(clamp(arr), attr.t.name))
                changed += 1
    return changed


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> shape (None for a dimension not known statically, e.g. a dynamic batch),
    from the graph's value_info / inputs / outputs (shape inference is run on a copy when the
    graph carries none)."""
    vis = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    if not model.graph.value_info:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        except Exception:  # shape inference is best effort
            pass
    shapes = {}
    for vi in vis:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims
            ]
    return shapes


def weight_matmuls_to_gemm(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every weight MatMul ``x [..., K] @ W [K, N]`` whose input shape is
    known but for at most one leading dimension (a dynamic batch), together with its bias
    ``Add`` of a 1-D ``[N]`` constant when that Add is its only consumer, as
    ``Reshape [-1, K] -> Gemm(W, bias) -> Reshape [..., N]`` (a 2-D input: the Gemm alone).
    Same arithmetic: it is what onnxruntime's own MatMul+Add fusion runs. Static INT8 runs a
    Gemm as ``QGemm``, which keeps its output in float at INT8 speed, where a MatMul whose
    output is left unquantized falls back to dequantized weights and a float MatMul. Returns
    the number of MatMuls rewritten."""
    inits = {i.name: i for i in model.graph.initializer}
    shapes = _shapes(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}
    new_nodes: list[onnx.NodeProto] = []
    drop: set[str] = set()  # the first outputs of the bias Adds folded into a Gemm
    new_inits: list[onnx.TensorProto] = []
    rewritten = 0
    for node in model.graph.node:
        if node.output and node.output[0] in drop:
            continue
        w = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        shape = shapes.get(node.input[0]) if w is not None else None
        if (
            w is None
            or shape is None
            or len(w.dims) != 2
            or len(shape) < 2
            or shape[-1] != w.dims[0]
            or sum(d is None for d in shape[:-1]) > 1  # the output Reshape can infer one dim only
        ):
            new_nodes.append(node)
            continue
        k, n_out = int(w.dims[0]), int(w.dims[1])
        out_name, bias = node.output[0], None
        users = consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in outputs:
            add = users[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            b = inits.get(other)
            if b is not None and list(b.dims) == [n_out]:
                bias, out_name = other, add.output[0]
                drop.add(add.output[0])
        base = node.name or f"MatMul_{rewritten}"
        gemm_inputs = [node.input[1]] + ([bias] if bias else [])
        if len(shape) == 2:  # already 2-D: a Gemm as is
            new_nodes.append(
                onnx.helper.make_node("Gemm", [node.input[0], *gemm_inputs], [out_name], name=f"{base}/Gemm")
            )
            rewritten += 1
            continue
        in_shape = numpy_helper.from_array(np.array([-1, k], dtype=np.int64), f"{base}/gemm_in_shape")
        out_shape = numpy_helper.from_array(
            np.array([-1 if d is None else d for d in shape[:-1]] + [n_out], dtype=np.int64),
            f"{base}/gemm_out_shape",
        )
        new_inits += [in_shape, out_shape]
        flat, gemm_out = f"{base}/gemm_in", f"{base}/gemm_out"
        new_nodes.append(
            onnx.helper.make_node(
                "Reshape", [node.input[0], in_shape.name], [flat], name=f"{base}/gemm_in_reshape"
            )
        )
        new_nodes.append(onnx.helper.make_node("Gemm", [flat, *gemm_inputs], [gemm_out], name=f"{base}/Gemm"))
        new_nodes.append(
            onnx.helper.make_node(
                "Reshape", [gemm_out, out_shape.name], [out_name], name=f"{base}/gemm_out_reshape"
            )
        )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]  # the folded bias Adds were skipped above (they follow their MatMul)
        model.graph.node.extend(new_nodes)
        model.graph.initializer.extend(new_inits)
    return rewritten


def prepare_transformer(
    model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]] = (), rtol: float = 1e-4
) -> tuple[onnx.ModelProto, list[str]]:
    """For a graph with attention: :func:`clamp_attention_masks` and
    :func:`weight_matmuls_to_gemm` on a copy, checked on ``feeds`` (a few model inputs; the
    rewritten outputs must match within ``rtol`` of the largest output, else the original is
    returned and a note says why). Returns ``(model, notes)``; any other graph comes back
    unchanged with no notes."""
    if not has_attention(model):
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    masks = clamp_attention_masks(out)
    gemms = weight_matmuls_to_gemm(out)
    if not (masks or gemms):
        return model, []
    feeds = list(feeds)
    if feeds:
        worst = _max_rel_diff(model, out, feeds)
        if not worst <= rtol:
            return model, [
                f"INT8: transformer graph rewrite (mask clamp, MatMul -> Gemm) changed the FP32 outputs "
                f"by {worst:.2g} relative; kept the graph as it was"
            ]
    notes = []
    if masks:
        notes.append(
            f"INT8: clamped {masks} attention-mask constant(s) below -1e5 (finfo.min) to -1e4 "
            "(exact after the softmax)"
        )
    if gemms:
        notes.append(
            f"INT8: ran {gemms} weight MatMul(s) as Gemm (same arithmetic; INT8 QGemm keeps float outputs)"
        )
    return out, notes


def _max_rel_diff(a: onnx.ModelProto, b: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sa = ort.InferenceSession(a.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(b.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    for feed in feeds:
        for x, y in zip(sa.run(None, feed), sb.run(None, feed), strict=True):
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            scale = max(float(np.abs(x).max()), 1e-6) if x.size else 1.0
            worst = max(worst, float(np.abs(x - y).max()) / scale if x.size else 0.0)
    return worst
