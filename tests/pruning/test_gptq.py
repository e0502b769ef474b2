"""GPTQ rounding: better layer outputs than round-to-nearest, on onnxruntime's exact grid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from sparsify_runner.kernels.gptq import gptq_quantize, round_to_grid, symmetric_scales
from sparsify_runner.kernels.hessian import HessianAccumulator, InputSpec
from sparsify_runner.modifiers.onnx_gptq import gptq_onnx


def _correlated_inputs(cols: int, n: int, seed: int) -> torch.Tensor:
    """Features of unequal energy mixed together: the case where rounding errors can cancel."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols**0.5
    return (mix @ torch.randn(cols, n, generator=g)) * (torch.rand(cols, 1, generator=g) * 2 + 0.1)


def _assert_on_grid(q: torch.Tensor, w: torch.Tensor, qmax: int) -> None:
    """Integers in [-qmax, qmax] on w's per-row scale, and one weight per row at +-qmax
    (so a quantizer that derives the scale from max|q| finds the same scale)."""
    scale = symmetric_scales(w, qmax).unsqueeze(-1)
    k = q / scale
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert int(k.round().abs().max()) <= qmax
    assert torch.allclose(q.abs().amax(-1), w.abs().amax(-1), rtol=1e-6)


@pytest.mark.parametrize("qmax", [127, 64, 7])
def test_gptq_reconstructs_linear_layer_better_than_nearest(qmax: int) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 80, generator=g)
    w[:, :8] = 0.0  # pruned columns must stay zero
    x = _correlated_inputs(80, 3000, seed=4)
    acc = HessianAccumulator(InputSpec(kind="linear", cols=80), n_samples=1, max_rows=10**6)
    acc.add(x.t().numpy())
    q = gptq_quantize(w, acc.finalize(), qmax=qmax, blocksize=32)
    rtn = round_to_grid(w, qmax)
    _assert_on_grid(q, w, qmax)
    assert torch.all(q[:, :8] == 0)
    err_gptq = torch.linalg.norm(w @ x - q @ x)
    err_rtn = torch.linalg.norm(w @ x - rtn @ x)
    assert err_gptq < 0.8 * err_rtn


def test_gptq_handles_depthwise_groups_as_a_batch() -> None:
    g = torch.Generator().manual_seed(5)
    groups, cols = 12, 9  # a depthwise 3x3 conv: one row of 9 weights per group
    w = torch.randn(groups, 1, cols, generator=g) * torch.rand(groups, 1, 1, generator=g) * 4
    xs = [_correlated_inputs(cols, 2000, seed=10 + i) for i in range(groups)]
    h = torch.stack([2 * x @ x.t() / x.shape[1] for x in xs]).double()
    q = gptq_quantize(w, h, qmax=127)
    _assert_on_grid(q, w, 127)
    rtn = round_to_grid(w, 127)
    err = sum(float(torch.linalg.norm((w[i] - q[i]) @ xs[i])) for i in range(groups))
    err_rtn = sum(float(torch.linalg.norm((w[i] - rtn[i]) @ xs[i])) for i in range(groups))
    assert err < 0.9 * err_rtn


def _outputs(model: onnx.ModelProto, data: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {k: v[None] for k, v in s.items()})[0] for s in data])


def _rounded_to_nearest(model: onnx.ModelProto, qmax: int) -> onnx.ModelProto:
    from sparsify_runner.onnx_graph.layers import find_layers

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for ly in find_layers(out)[0]:
        w = torch.from_numpy(ly.to_matrix(numpy_helper.to_array(inits[ly.weight_name])))
        inits[ly.weight_name].CopyFrom(
            numpy_helper.from_array(ly.from_matrix(round_to_grid(w, qmax).numpy()), ly.weight_name)
        )
    return out


def test_gptq_onnx_beats_nearest_and_onnxruntime_keeps_its_integers(cnn_onnx, cnn_data, tmp_path):
    """Through the real quantizer: the weights quantize_static writes are exactly ours."""
    calibration, holdout = cnn_data
    result = gptq_onnx(cnn_onnx, calibration, qmax=127)
    assert result.layers == 7 and result.bias_corrected == 7  # every Conv + the Gemm head
    onnx.checker.check_model(result.model)
    names = [i.name for i in cnn_onnx.graph.input]
    assert [i.name for i in result.model.graph.input] == names

    ref = _outputs(cnn_onnx, holdout)
    err_gptq = np.linalg.norm(_outputs(result.model, holdout) - ref)
    err_rtn = np.linalg.norm(_outputs(_rounded_to_nearest(cnn_onnx, 127), holdout) - ref)
    assert err_gptq < 0.8 * err_rtn

    assert _integers_kept_by_onnxruntime(result.model, calibration, tmp_path) == 7


def test_gptq_onnx_on_matmul_weights(transformer_onnx, transformer_data, tmp_path):
    """MatMul weights (stored in x out) round per output column; without an Add-constant bias
    after them there is nothing to correct, which the result says."""
    calibration, holdout = transformer_data
    result = gptq_onnx(transformer_onnx, calibration, qmax=127)
    assert result.layers == 7  # q, k, v, o, ffn up/down, head (tied / computed weights skipped)
    assert result.bias_corrected == 1 and any("bias correction skipped for 6" in n for n in result.notes)
    ref = _outputs(transformer_onnx, holdout)
    err_gptq = np.linalg.norm(_outputs(result.model, holdout) - ref)
    err_rtn = np.linalg.norm(_outputs(_rounded_to_nearest(transformer_onnx, 127), holdout) - ref)
    assert err_gptq < err_rtn
    assert _integers_kept_by_onnxruntime(result.model, calibration, tmp_path) == 7


def _integers_kept_by_onnxruntime(model: onnx.ModelProto, calibration, tmp_path) -> int:
    """Quantize with onnxruntime's per-channel static quantizer and check every INT8 weight it
    wrote dequantizes to exactly our rounded weight; returns how many weights were compared."""
    from onnxruntime.quantization import QuantType, quantize_static
    from sparsify_runner.modifiers.int8.candidates import CalibrationReader

    src, dst = tmp_path / "gptq.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    quantize_static(
        str(src),
        str(dst),
        CalibrationReader(calibration, 1),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    from sparsify_runner.onnx_graph.layers import find_layers

    rounded = {ly.weight_name for ly in find_layers(model)[0]}  # a tied weight is not ours to round
    ours = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in rounded}
    q = onnx.load(str(dst))
    qinits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    compared = 0
    for node in q.graph.node:
        weights = qinits.get(node.input[0])
        name = node.input[0].removesuffix("_quantized")
        if node.op_type != "DequantizeLinear" or weights is None or name not in ours:
            continue
        scale = qinits[node.input[1]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weights.ndim
        if scale.ndim:
            shape[axis] = -1
        restored = weights.astype(np.float32) * scale.reshape(shape)
        np.testing.assert_allclose(restored, ours[name], rtol=1e-6)
        compared += 1
    return compared


def test_bias_correction_removes_the_mean_output_shift(cnn_onnx, cnn_data):
    calibration, holdout = cnn_data
    ref = _outputs(cnn_onnx, holdout)
    with_bc = gptq_onnx(cnn_onnx, calibration, qmax=7)  # coarse grid: a visible shift
    without = gptq_onnx(cnn_onnx, calibration, qmax=7, bias_correction=False)
    shift_bc = np.abs((_outputs(with_bc.model, holdout) - ref).mean(axis=0)).mean()
    shift = np.abs((_outputs(without.model, holdout) - ref).mean(axis=0)).mean()
    assert without.bias_corrected == 0 and with_bc.bias_corrected == 7
    assert shift_bc < shift


def test_shared_bias_is_split_before_correction(cnn_onnx, cnn_data):
    """Exporters merge equal constants (a fresh ResNet-50's folded biases are one zero tensor):
    each layer gets its own copy, so one layer's correction cannot leak into another."""
    model = onnx.ModelProto()
    model.CopyFrom(cnn_onnx)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    stem, pw2 = convs[0], convs[3]  # both have 16 outputs
    shared = stem.input[2]
    old = pw2.input[2]
    pw2.input[2] = shared
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == old))
    calibration, _ = cnn_data
    result = gptq_onnx(model, calibration, qmax=127)
    assert result.bias_corrected == 7 and not result.notes
    biases = [n.input[2] for n in result.model.graph.node if n.op_type == "Conv"]
    assert len(set(biases)) == len(biases) and biases.count(shared) == 1
