"""INT8 search, stage 1: the model every candidate is built from. ``quant_pre_process``
(onnxruntime's graph optimizations + shape inference), unique node names (``nodes_to_exclude``
works by name), for a transformer graph the attention-mask clamp and the weight MatMul -> Gemm
rewrite (``transformer.prepare_transformer``, exact in FP32) and, given calibration samples,
equalized channel ranges of every depthwise convolution's input (``onnx_equalize``, exact in
FP32)."""

from __future__ import annotations

from pathlib import Path

import onnx

from .candidates import CalibrationReader, model_batch_size
from .transformer import prepare_transformer

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# A weight layer this small is a fixed projection (YOLO's DFL expectation: 16 weights 0..15),
# part of a detector's decode, not a learned layer.
MIN_LEARNED_WEIGHTS = 64
TRANSFORMER_CHECK_SAMPLES = 4
"""Calibration samples the transformer rewrites are checked on (outputs unchanged)."""
Sample = dict


def prepare(
    fp32_path: Path, work: Path, notes: list[str], calibration: list[Sample] | None = None
) -> tuple[Path, int]:
    """quant_pre_process + unique node names (nodes_to_exclude works by name), for a graph with
    attention the exact transformer rewrites (``transformer.prepare_transformer``: huge negative
    attention-mask constants clamped to -1e4, weight MatMuls as Gemm; checked on a few
    ``calibration`` samples when given) and, given ``calibration`` samples, activation-range
    equalization of the Conv -> depthwise Conv chains (``onnx_equalize``). Returns the model to
    quantize and the number of chains equalized."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..onnx_equalize import equalize_activations

    pre = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
    except Exception as err:  # some graphs defeat shape inference; quantize as is
        notes.append(f"quantization pre-processing skipped ({type(err).__name__})")
        model = onnx.load(str(fp32_path))
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    feeds = []
    if calibration:
        reader = CalibrationReader(calibration[:TRANSFORMER_CHECK_SAMPLES], model_batch_size(model))
        feeds = list(reader._feeds())
    model, transformer_notes = prepare_transformer(model, feeds)
    notes.extend(transformer_notes)
    chains = 0
    if calibration:
        result = equalize_activations(model, CalibrationReader(calibration, model_batch_size(model))._feeds())
        model, chains = result.model, result.chains
        if chains:
            notes.append(
                f"INT8: equalized the channel ranges of {chains} conv -> depthwise conv input(s) "
                f"(largest channel scale {result.max_scale:g}; exact in FP32)"
            )
    onnx.save(model, str(pre))
    return pre, chains


def weight_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {i.name for i in model.graph.initializer}
    return [
        n for n in model.graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in inits
    ]


def structural_exclusions(model: onnx.ModelProto) -> list[str]:
    """Depthwise convs and the first conv: the usual INT8 troublemakers on CPUs."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    out = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if convs and convs[0].name not in out:
        out.insert(0, convs[0].name)
    return out


def decode_tail(model: onnx.ModelProto) -> list[str]:
    """The last learned layers and every node after them: the nodes downstream of a weight
    layer with no learned weight layer downstream of them (a detector's sigmoid, box decode and
    DFL; a classifier's softmax), plus the learned layers that feed them (the prediction
    convs, so their logits and box-bin logits leave them unquantized). Quantizing the decode
    makes boxes collapse onto the INT8 grid (users see detectors that "detect nothing" after
    INT8); the prediction convs are 1x1 convs with few outputs, cheap in FP32."""
    import numpy as np

    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    learned = {n.name for n in weight_nodes(model) if sizes.get(n.input[1], 0) >= MIN_LEARNED_WEIGHTS}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    after: set[str] = set()  # nodes downstream of a learned layer
    for n in model.graph.node:  # ONNX graphs are topologically sorted
        if any(p.name in learned or p.name in after for i in n.input if (p := producer.get(i)) is not None):
            after.add(n.name)
    feeds: set[str] = set()  # nodes with a learned layer at or below them
    for n in reversed(model.graph.node):
        if n.name in learned or any(c.name in feeds for o in n.output for c in consumers.get(o, [])):
            feeds.add(n.name)
    tail = {n.name for n in model.graph.node if n.name in after and n.name not in feeds}
    heads = {
        p.name
        for n in model.graph.node
        if n.name in tail
        for i in n.input
        if (p := producer.get(i)) is not None and p.name in learned
    }
    return [n.name for n in model.graph.node if n.name in tail or n.name in heads]
