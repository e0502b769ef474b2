"""Helpers shared by the runner-I/O tests (loopback only)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import urllib.request
from pathlib import Path

import numpy as np

PUSHGATEWAY_BIN = os.environ.get("SPARSIFY_TEST_PUSHGATEWAY", "/usr/bin/prometheus-pushgateway")
INSTALL_HINT = "install the test dependencies: bash scripts/install-test-deps.sh"
ACCESS_KEY = "AKIATESTSPARSIFY0001"
SECRET_KEY = "s3cr3t-Test-Value-Never-Logged-7f3a9c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return resp.read().decode()


def http_post(url: str, body: bytes = b"") -> str:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, using prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def runner_cmd() -> list[str]:
    exe = shutil.which("sparsify-runner", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "sparsify_runner.cli"]


def read_summary(path: Path) -> dict:
    text = path.read_text()
    assert len(text.encode()) <= 4096
    return json.loads(text)


def mkey(name: str, **labels: str) -> str:
    """The ``parse_metrics`` key of one sample."""
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


FAST_RECIPE = {"benchmark_seconds": 0.2, "calibration_samples": 16, "int8_candidate_seconds": 0.1}


def tiny_onnx(path: Path) -> None:
    """Conv(3->8, 3x3) -> Relu -> Flatten -> Gemm(288->4), static batch 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4, 288)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
