"""Bad models and flags: one line on stderr, exit 2, nothing printed on stdout."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from .conftest import FAST, conv_net, run_cli


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict-bad")
    garbage = root / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01this is not a protobuf model" * 10)
    empty = root / "empty.onnx"
    empty.write_bytes(b"")
    dynamic = conv_net(root / "dynamic.onnx", x_dims=["n", 3, "h", "w"])
    # an INT8 model: predict works on the FP32 baseline
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    graph = helper.make_graph(
        [q, dq],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s"),
            numpy_helper.from_array(np.array(128, dtype=np.uint8), "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    quantized = root / "int8.onnx"
    onnx.save(model, str(quantized))
    return {"garbage": garbage, "empty": empty, "dynamic": dynamic, "quantized": quantized, "folder": root}


@pytest.mark.parametrize(
    ("case", "extra", "needle"),
    [
        ("missing", [], "does not exist"),
        ("garbage", [], "is not an ONNX model"),
        ("empty", [], "is empty"),
        ("folder", [], "is a folder"),
        ("dynamic", [], "dynamic dimension"),
        ("quantized", [], "already quantized"),
        ("good", ["--levels", "0.2,1.5"], "outside [0, 1]"),
        ("good", ["--levels", "a,b"], "comma-separated numbers"),
        ("good", ["--levels", ","], "--levels is empty"),
        ("good", ["--structures", "blocks"], "unknown structure 'blocks'"),
        ("good", ["--seconds", "0"], "--seconds must be positive"),
        ("good", ["--deploy-batch-size", "0"], "--deploy-batch-size"),
        ("good", ["--deploy-device", "tpu"], "--deploy-device"),
        ("good", ["--deploy-quant-format", "int4"], "--deploy-quant-format"),
        ("good", ["--layers-per-kind", "0"], "--layers-per-kind"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, extra, needle, bad_files, conv_onnx, tmp_path):
    model = {"missing": tmp_path / "nope.onnx", "good": conv_onnx}.get(case) or bad_files[case]
    code, out, err = run_cli(["predict", str(model), "--json", *FAST, *extra])
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]


def test_unknown_flag_is_one_line(conv_onnx):
    code, _, err = run_cli(["predict", str(conv_onnx), "--bogus"])
    assert code == 2 and len(err.strip().splitlines()) == 1
