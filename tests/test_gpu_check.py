"""``make gpu-check`` (scripts/gpu_check.py): skips cleanly without a GPU; the parts that need
none (the commands it runs, its onnxruntime timing, what counts as a failure) work on a CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU this machine has
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "gpu-check: skipped, no CUDA GPU here (torch.cuda.is_available() is False)"
    ]
    assert "Traceback" not in proc.stderr


def test_it_runs_the_commands_the_operator_renders(gpu_check, tmp_path):
    one = gpu_check.rendered_command(1)
    assert one[:4] == ["sparsify-runner", "run", "--quiet", "--experiment"]
    four = gpu_check.rendered_command(4)
    assert four[:7] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "4",
        "-m",
        "sparsify_runner.cli",
        "run",
    ]
    local = gpu_check.local_command(four, tmp_path / "exp.json")
    assert local[0] == str(Path(sys.executable).parent / "torchrun")
    assert local[1:] == [*four[1:9], str(tmp_path / "exp.json")]


def _relu_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_time_provider_measures_and_reports_a_provider_that_did_not_load(gpu_check, tmp_path):
    import onnxruntime as ort

    model = _relu_model(tmp_path / "relu.onnx")
    timed = gpu_check.time_provider(model, gpu_check.CPU, 4, iterations=20)
    assert timed["ok"] and timed["batch_size"] == 4 and timed["median_ms"] > 0 and timed["items_per_s"] > 0
    if gpu_check.TENSORRT not in ort.get_available_providers():
        missing = gpu_check.time_provider(model, gpu_check.TENSORRT, 1, iterations=1)
        assert missing["ok"] is False and "did not load" in missing["error"]


def test_failures_count_what_should_have_worked_not_what_was_skipped(gpu_check):
    result = {
        "training": {"one_gpu": {"ok": True}, "all_gpus": {"skipped": "one GPU"}},
        "onnxruntime": {
            "onnxruntime": "1.x",
            "batch_1": {"CPUExecutionProvider": {"ok": True}, "TensorrtExecutionProvider": {"skipped": "no"}},
            "batch_32": {"CUDAExecutionProvider": {"ok": False, "provider": "CPUExecutionProvider"}},
        },
    }
    assert gpu_check.failures(result) == ["batch_32/CUDAExecutionProvider"]
    result["training"]["one_gpu"] = {"ok": False, "exit_code": 1}
    assert gpu_check.failures(result)[0] == "one_gpu"
