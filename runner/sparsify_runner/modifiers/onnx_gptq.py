"""GPTQ weight rounding + bias correction of an ONNX model, ahead of ``quantize_static``.

onnxruntime's static quantizer rounds each weight to the nearest INT8 step. On networks with
few weights per output (depthwise convolutions have 9) those rounding errors do not average
out: measured on the pretrained MobileNetV2, round-to-nearest weights alone (activations in
float) keep 81% top-1 agreement with FP32; the same weights from this pass keep 98%.

:func:`gptq_onnx` walks the Conv/Gemm/MatMul layers in waves, like the OBS pruning pass
(``onnx_graph.capture.capture_waves``: each wave's inputs come from the model with the earlier
waves already rounded), and per layer

1. rounds the weights with :func:`.gptq.gptq_quantize` on exactly the grid onnxruntime will
   derive from them (so its own rounding then reproduces these integers: no second rounding);
2. corrects the bias for the mean output shift the rounding leaves,
   ``b += (W - Q) E[x]`` (Nagel et al. 2019, "empirical" bias correction from calibration
   inputs), adding a bias where the layer has none (Conv, Gemm) or adjusting the constant
   Add that follows a MatMul.

The model keeps FP32 weights (on the INT8 grid); ``quantize_static`` turns it into INT8.
Zero weights stay zero, so pruned sparsity survives.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..kernels.damped_hessian import obs_damp
from ..kernels.gptq import gptq_quantize
from ..kernels.hessian import DEFAULT_MAX_ROWS
from ..kernels.obs import relative_output_error
from ..onnx_graph.capture import capture_waves, initializer_map, write_back_initializers
from ..onnx_graph.layers import PrunableLayer, assign_roles_and_waves, find_layers
from ..progress import layer_progress


@dataclass
class GptqResult:
    model: onnx.ModelProto
    layers: int
    """Layers whose weights were rounded."""
    bias_corrected: int
    output_error: dict[str, float] = field(default_factory=dict)
    """Per layer: relative squared output error of the rounded weights on the calibration inputs."""
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def _own_biases(model: onnx.ModelProto, layers: list[PrunableLayer], inits: dict) -> None:
    """Give every Conv/Gemm a bias of its own before any capture: a zero one where it has
    none, a copy where it shares one (exporters merge equal constants: a randomly initialized
    ResNet-50 folds BatchNorm into the same all-zero bias for 7 convs). The capture graph then
    never changes mid-pass, later waves see the corrected biases, and no correction leaks
    into another layer."""
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for ly in layers:
        node = model.graph.node[ly.node_index]
        if ly.op_type not in ("Conv", "Gemm"):
            continue
        current = node.input[2] if len(node.input) > 2 else ""
        if current and uses.get(current, 0) == 1:
            continue
        outputs = ly.shape[0] if ly.op_type == "Conv" or not ly.transposed else ly.shape[1]
        if current and current in inits and tuple(inits[current].dims) == (outputs,):
            values = numpy_helper.to_array(inits[current])
        elif current:
            continue  # a broadcast or computed bias: left alone, reported as not corrected
        else:
            values = np.zeros(outputs, dtype=ly.dtype)
        name = f"{ly.weight_name}__bias"
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        tensor = numpy_helper.from_array(values.copy(), name)
        model.graph.initializer.append(tensor)
        inits[name] = tensor
        if current:
            uses[current] -= 1  # the last user keeps the original


def _bias_of(model: onnx.ModelProto, layer: PrunableLayer, inits: dict, outputs: int) -> str | None:
    """The initializer holding the layer's per-output bias (Conv/Gemm input C, or the constant
    of the Add right after a MatMul), or None when there is none to adjust (or it is shared)."""
    node = model.graph.node[layer.node_index]
    if layer.op_type in ("Conv", "Gemm"):
        name = node.input[2] if len(node.input) > 2 else ""
    else:
        consumers = [n for n in model.graph.node if node.output[0] in n.input]
        other = [i for i in consumers[0].input if i != node.output[0]] if len(consumers) == 1 else []
        name = other[0] if len(other) == 1 and consumers[0].op_type == "Add" else ""
    if name not in inits or tuple(inits[name].dims) != (outputs,):
        return None
    uses = sum(list(n.input).count(name) for n in model.graph.node)
    return name if uses == 1 else None


def gptq_onnx(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    *,
    qmax: int = 127,
    bias_correction: bool = True,
    percdamp: float = 0.01,
    max_rows: int = DEFAULT_MAX_ROWS,
    show_progress: bool = False,
    threads: int | None = None,
) -> GptqResult:
    """A copy of ``model`` with every Conv/Gemm/MatMul weight on its per-channel INT8 grid
    (``qmax`` 127, or 64 for onnxruntime's ``reduce_range``), rounded by GPTQ, and biases corrected."""
    started = time.perf_counter()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializer_map(out)
    layers, _ = find_layers(out)
    notes: list[str] = []
    if bias_correction:
        _own_biases(out, layers, inits)
    assign_roles_and_waves(out, layers, {ly.name for ly in layers})
    timings = {"capture_s": 0.0, "hessian_s": 0.0, "round_s": 0.0}
    errors: dict[str, float] = {}
    corrected = 0
    no_bias: list[str] = []
    prev_threads = torch.get_num_threads()
    n_threads = threads or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n_threads)
    progress, task = layer_progress(show_progress, len(layers), "GPTQ")
    try:
        with progress:
            waves = capture_waves(
                out,
                inits,
                layers,
                calibration,
                timings,
                progress,
                task,
                max_rows=max_rows,
                correct_upstream=False,
                threads=n_threads,
            )
            for members, stats in waves:
                for ly in members:
                    t0 = time.perf_counter()
                    st = stats[(ly.data_input, ly.spec)]
                    # a classifier sees one row per sample: dampen more when rows < cols
                    damp = obs_damp(percdamp, ly.spec.cols, st.rows)
                    w = torch.from_numpy(ly.to_matrix(numpy_helper.to_array(inits[ly.weight_name])))
                    q = gptq_quantize(w, st.hessian, qmax=qmax, percdamp=damp)
                    errors[ly.name] = relative_output_error(w, q, st.hessian)
                    inits[ly.weight_name] = numpy_helper.from_array(ly.from_matrix(q.numpy()), ly.weight_name)
                    if bias_correction:
                        shift = torch.einsum("grc,gc->gr", (w - q).double(), st.mean).reshape(-1).numpy()
                        bias = _bias_of(out, ly, inits, shift.size)
                        if bias is None:
                            no_bias.append(ly.name)
                        else:
                            b = numpy_helper.to_array(inits[bias])
                            inits[bias] = numpy_helper.from_array((b + shift).astype(b.dtype), bias)
                            corrected += 1
                    timings["round_s"] += time.perf_counter() - t0
                    progress.advance(task)
    finally:
        torch.set_num_threads(prev_threads)
    write_back_initializers(out, inits)
    onnx.checker.check_model(out)
    if no_bias:
        notes.append(
            f"bias correction skipped for {len(no_bias)} layer(s) without a per-output bias to adjust"
        )
    timings["total_s"] = time.perf_counter() - started
    return GptqResult(
        model=out,
        layers=len(layers),
        bias_corrected=corrected,
        output_error=errors,
        notes=notes,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
