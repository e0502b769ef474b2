"""Small graphs for the structured one-shot tests: built here with torch / onnx.helper, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from oneshot.conftest import export, run_cli, write_samples  # noqa: F401 - re-exported for the tests
from onnx import TensorProto, helper, numpy_helper

FAST = '{"benchmark_seconds": 0.2, "int8_candidate_seconds": 0.1, "round_channels_to": 1}'


def _tiny_net():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1, groups=32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    ).eval()


@pytest.fixture(scope="session")
def conv_onnx(tmp_path_factory) -> Path:
    return export(_tiny_net(), tmp_path_factory.mktemp("models") / "convnet.onnx")


@pytest.fixture(scope="session")
def wide_conv_onnx(tmp_path_factory) -> Path:
    """Wide enough (~114M MACs, a few ms per sample) that removing channels is measurably
    faster on any CPU, so the outcome search's 'faster than the baseline' gate passes for real,
    not by timing luck (at ~55M MACs a 50% cut measured 1.15x-1.5x on a noisy machine)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 192, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(192, 192, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(192, 10),
    ).eval()
    return export(net, tmp_path_factory.mktemp("models") / "wide_convnet.onnx")


@pytest.fixture(scope="session")
def calib(tmp_path_factory) -> Path:
    return write_samples(tmp_path_factory.mktemp("data") / "calib", 40)


def residual_concat_net():
    """a -> (b, c) -> concat -> d; d + f(d) (residual) -> pool -> fc."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 1)
            self.d = nn.Conv2d(16, 16, 1)
            self.f = nn.Conv2d(16, 16, 3, padding=1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            t = torch.relu(self.a(x))
            cat = torch.cat([torch.relu(self.b(t)), torch.relu(self.c(t))], dim=1)
            d = self.d(cat)
            y = torch.relu(d + self.f(torch.relu(d)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    torch.manual_seed(0)
    return Net().eval()


def bn_depthwise_graph(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> depthwise Conv -> Mul(per-channel) -> Conv ->
    GlobalAveragePool -> Flatten -> Gemm, written with onnx.helper (BN not folded)."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, positive=False):
        arr = rng.standard_normal(shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(arr) + 0.5 if positive else arr, name)

    c, k, n = 8, 6, 5
    inits = [
        init("w1", c, 3, 3, 3), init("b1", c),
        init("g", c, positive=True), init("beta", c), init("mu", c), init("var", c, positive=True),
        init("w2", c, 1, 3, 3), init("b2", c), init("s", c, 1, 1, positive=True),
        init("w3", k, c, 1, 1), init("b3", k), init("w4", n, k), init("b4", n),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["t1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["t1", "g", "beta", "mu", "var"], ["t2"], name="bn"),
        helper.make_node("Relu", ["t2"], ["t3"], name="relu"),
        helper.make_node("Conv", ["t3", "w2", "b2"], ["t4"], name="dw", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["t4", "s"], ["t5"], name="scale"),
        helper.make_node("Conv", ["t5", "w3", "b3"], ["t6"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["t6"], ["t7"], name="gap"),
        helper.make_node("Flatten", ["t7"], ["t8"], name="flat"),
        helper.make_node("Gemm", ["t8", "w4", "b4"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bn_dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def run_model(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
