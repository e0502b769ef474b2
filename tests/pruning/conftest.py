"""Tiny ONNX models for the pruning tests, built (and exported) in fixtures."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

torch.set_num_threads(2)


class TinyCNN(torch.nn.Module):
    """Stem conv, a depthwise + pointwise block with a residual, a strided conv, Gemm head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, stride=1, padding=1)
        self.pw1 = torch.nn.Conv2d(16, 64, 1)
        self.dw = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.pw2 = torch.nn.Conv2d(64, 16, 1)
        self.down = torch.nn.Conv2d(16, 96, 3, stride=2, padding=(1, 1), dilation=1)
        self.mid = torch.nn.Conv2d(96, 96, 3, padding=2, dilation=2)
        self.head = torch.nn.Linear(96, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.pw2(torch.relu(self.dw(torch.relu(self.pw1(x)))))
        x = torch.relu(self.down(x))
        x = torch.relu(self.mid(x))
        return self.head(x.mean(dim=(2, 3)))


def _images(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Smooth, correlated images (not white noise) so Hessians have structure."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.standard_normal((3, 8, 8)).astype(np.float32)
        img = np.kron(base, np.ones((1, 2, 2), dtype=np.float32))
        img += 0.3 * rng.standard_normal((3, 16, 16)).astype(np.float32)
        out.append({"x": img})
    return out


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"])
    return onnx.load(str(path))


@pytest.fixture(scope="session")
def cnn_data() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    return _images(48, seed=1), _images(32, seed=2)


def build_mlp_transformer(
    seq: int = 8, dim: int = 64, hidden: int = 256, classes: int = 80
) -> onnx.ModelProto:
    """A transformer-style block by hand: MatMul weights (incl. Q/K/V sharing one input),
    attention MatMuls between activations, a weight reached through Transpose (not an
    initializer), a tied weight used twice, and a Gemm head with transB=0."""
    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name
        )

    inits = [
        w("Wq", dim, dim),
        w("Wk", dim, dim),
        w("Wv", dim, dim),
        w("Wo", dim, dim),
        w("W1", dim, hidden),
        w("W2", hidden, dim),
        w("Wt_src", dim, dim),
        w("Wtied", dim, dim),
        w("Whead", dim, classes),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(dim), dtype=np.float32), "scale"),
        numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "bhead"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "Wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"], name="scores"),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["ctx"], name="attn_v"),
        helper.make_node("MatMul", ["ctx", "Wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["x", "o"], ["h1"]),
        helper.make_node("MatMul", ["h1", "W1"], ["f1"], name="ffn_up"),
        helper.make_node("Relu", ["f1"], ["f2"]),
        helper.make_node("MatMul", ["f2", "W2"], ["f3"], name="ffn_down"),
        helper.make_node("Add", ["h1", "f3"], ["h2"]),
        helper.make_node("Transpose", ["Wt_src"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["h2", "Wt"], ["h3"], name="via_transpose"),
        helper.make_node("MatMul", ["h3", "Wtied"], ["h4"], name="tied_a"),
        helper.make_node("MatMul", ["h4", "Wtied"], ["h5"], name="tied_b"),
        helper.make_node("ReduceMean", ["h5"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "Whead", "bhead"], ["y"], name="head", transB=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mini_transformer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def transformer_onnx() -> onnx.ModelProto:
    return build_mlp_transformer()


@pytest.fixture(scope="session")
def transformer_data() -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((64, 64)).astype(np.float32) / 8  # correlated features

    def make(n: int) -> list[dict[str, np.ndarray]]:
        return [
            {"x": (rng.standard_normal((8, 64)).astype(np.float32) @ (np.eye(64, dtype=np.float32) + mix))}
            for _ in range(n)
        ]

    return make(48), make(32)
