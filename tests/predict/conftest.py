"""Tiny FP32 ONNX models for the predict tests, built with onnx.helper (nothing downloaded)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

FAST = ["--seconds", "0.2", "--layers-per-kind", "1"]


def _init(rng, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def _save(nodes, inits, x_shape, y_shape, path: Path, *, x_dims=None) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims or list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_net(path: Path, *, x_dims=None) -> Path:
    """Conv 3x3 (3->16) -> Conv 1x1 (16->32) -> depthwise 3x3 (32) -> pool -> Gemm (32->10)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=32
        ),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    inits = [
        _init(rng, "w0", (16, 3, 3, 3)),
        _init(rng, "b0", (16,)),
        _init(rng, "w1", (32, 16, 1, 1)),
        _init(rng, "b1", (32,)),
        _init(rng, "w2", (32, 1, 3, 3)),
        _init(rng, "b2", (32,)),
        _init(rng, "w3", (10, 32)),
        _init(rng, "b3", (10,)),
    ]
    return _save(nodes, inits, (1, 3, 24, 24), (1, 10), path, x_dims=x_dims)


def mlp(path: Path) -> Path:
    """Token MLP on [1, 8, 64]: MatMul (64->128) -> Relu -> MatMul + Add (128->10). onnxruntime
    keeps the first a MatMul and turns the second into Reshape + Gemm."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"]),
        helper.make_node("Relu", ["m0"], ["r0"]),
        helper.make_node("MatMul", ["r0", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 128)) / 8).astype(np.float32), "w0"),
        numpy_helper.from_array((rng.standard_normal((128, 10)) / 11).astype(np.float32), "w1"),
        _init(rng, "b1", (10,)),
    ]
    return _save(nodes, inits, (1, 8, 64), (1, 8, 10), path)


@pytest.fixture(scope="session")
def conv_onnx(tmp_path_factory) -> Path:
    return conv_net(tmp_path_factory.mktemp("predict-models") / "conv.onnx")


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    return mlp(tmp_path_factory.mktemp("predict-models") / "mlp.onnx")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """The real ``sparsifyctl`` entry point in-process: (exit code, stdout, stderr). Captures by
    redirecting sys.stdout/stderr, so module-scoped fixtures can share one run."""
    from sparsifyctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def predict_json(argv: list[str]) -> dict:
    code, out, err = run_cli(["predict", *argv, "--json", *FAST])
    assert code == 0, err
    return json.loads(out)
