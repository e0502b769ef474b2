"""Activation-range equalization (modifiers/onnx_equalize.py): exact in FP32, equal channel
ranges at every depthwise-conv input, less INT8 error, and no rewrite where it would not be exact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from .conftest import export


def _imbalanced_cnn(activation: str = "relu6", seed: int = 0):
    """Conv whose output channels span ranges 0.01 .. 10, then an activation and a depthwise
    conv that scales each channel back (as BatchNorm folding leaves MobileNets: every channel
    matters downstream), then a pointwise conv and a classifier."""
    import torch

    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
    with torch.no_grad():
        gain = torch.logspace(-2, 1, 16)
        conv.weight.mul_(gain.view(-1, 1, 1, 1))
        conv.bias.mul_(gain)
        depthwise.weight.div_(gain.view(-1, 1, 1, 1))
    act = {"relu6": torch.nn.ReLU6(), "relu": torch.nn.ReLU(), "hardtanh": torch.nn.Hardtanh(-1.0, 1.0)}
    return torch.nn.Sequential(
        conv,
        act[activation],
        depthwise,
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()


def _feeds(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feeds) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, f)[0] for f in feeds])


@pytest.mark.parametrize("activation", ["relu6", "relu"])
def test_equalization_is_exact_and_equalizes_channel_ranges(tmp_path, activation):
    from sparsify_runner.modifiers.onnx_equalize import channel_ranges, equalize_activations, find_chains

    model = onnx.load(str(export(_imbalanced_cnn(activation), tmp_path / "m.onnx")))
    calib = _feeds(24, seed=0)
    chains = find_chains(model)
    assert len(chains) == 1 and chains[0].consumer.op_type == "Conv"
    tensor = chains[0].tensor
    before = channel_ranges(model, [tensor], calib)[tensor]
    assert before.max() / before.min() > 100  # the imbalance the test is about

    result = equalize_activations(model, calib)
    assert result.chains == 1 and result.max_scale > 100
    after = channel_ranges(result.model, [tensor], calib)[tensor]
    np.testing.assert_allclose(after, before.max(), rtol=1e-5)  # every channel spans the same range
    ref, new = _run(model, calib), _run(result.model, calib)
    np.testing.assert_allclose(new, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    onnx.checker.check_model(result.model)
    # the input model is left alone
    assert np.allclose(channel_ranges(model, [tensor], calib)[tensor], before)


def test_equalization_lowers_int8_error(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_static
    from sparsify_runner.modifiers.int8.candidates import CalibrationReader
    from sparsify_runner.modifiers.onnx_equalize import equalize_activations

    model = onnx.load(str(export(_imbalanced_cnn(), tmp_path / "m.onnx")))
    calib = [{"x": f["x"][0]} for f in _feeds(32, seed=0)]
    held_out = _feeds(16, seed=1)
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    equalized = tmp_path / "equalized.onnx"
    onnx.save(equalize_activations(model, CalibrationReader(calib, 1)._feeds()).model, str(equalized))
    ref = _run(model, held_out)
    errors = {}
    for src in (plain, equalized):
        out = tmp_path / f"{src.stem}-int8.onnx"
        quantize_static(
            str(src),
            str(out),
            CalibrationReader(calib, 1),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        q = _run(onnx.load(str(out)), held_out)
        errors[src.stem] = float(np.linalg.norm(q - ref) / np.linalg.norm(ref))
    assert errors["equalized"] < 0.7 * errors["plain"], errors


def test_no_chain_where_rescaling_would_not_be_exact(tmp_path):
    """Clip(-1, 1) is not positively homogeneous; a tensor read by two nodes, or a depthwise
    conv fed by a non-Conv, is left alone."""
    import torch
    from sparsify_runner.modifiers.onnx_equalize import equalize_activations, find_chains

    clipped = onnx.load(str(export(_imbalanced_cnn("hardtanh"), tmp_path / "clip.onnx")))
    assert find_chains(clipped) == []

    class TwoReaders(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return (self.dw(y) + y).mean(dim=(2, 3))

    shared = onnx.load(str(export(TwoReaders().eval(), tmp_path / "shared.onnx")))
    assert find_chains(shared) == []
    result = equalize_activations(shared, _feeds(4, seed=0))
    assert result.chains == 0 and result.max_scale == 1.0
