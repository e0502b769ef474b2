"""Helpers of the KServe hand-off tests (a module of its own: ``conftest`` is ambiguous when
several test folders are on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FAST = '{"benchmark_seconds": 0.2, "calibration_samples": 16, "int8_candidate_seconds": 0.1}'


def tiny_model(path: Path, *, batch: int | str = 1, extra_int64_input: bool = False) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm; batch 1 or a symbolic batch dim."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])]
    if extra_int64_input:
        nodes.append(helper.make_node("Identity", ["ids"], ["ids_out"]))
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 5]))
        outputs.append(helper.make_tensor_value_info("ids_out", TensorProto.INT64, [batch, 5]))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The real ``sparsifyctl`` entry point in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.out, out.err
