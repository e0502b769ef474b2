"""INT8 search, stage 1: the model every candidate is built from. ``quant_pre_process``
(onnxruntime's graph optimizations + shape inference), unique node names (``nodes_to_exclude``
works by name) and, given calibration samples, equalized channel ranges of every depthwise
convolution's input (``onnx_equalize``, exact in FP32)."""

from __future__ import annotations

from pathlib import Path

import onnx

from .candidates import CalibrationReader, model_batch_size

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
Sample = dict


def prepare(
    fp32_path: Path, work: Path, notes: list[str], calibration: list[Sample] | None = None
) -> tuple[Path, int]:
    """quant_pre_process + unique node names (nodes_to_exclude works by name) and, given
    ``calibration`` samples, activation-range equalization of the Conv -> depthwise Conv chains
    (``onnx_equalize``). Returns the model to quantize and the number of chains equalized."""
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
