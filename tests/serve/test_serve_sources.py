"""Where a served model comes from: a file, a run's output folder, s3:// (through the
runner's storage module, against a moto S3 server on loopback)."""

from __future__ import annotations

import json

import numpy as np
import requests

from .conftest import expected, linear_onnx, serving


def _infer(server, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = requests.post(f"{server.url}/v2/models/{server.name}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(x.shape[0], -1)


def test_s3_run_folder_and_s3_file(tmp_path, s3_bucket):
    model = linear_onnx(tmp_path / "model.onnx")
    report = {"experiment": {"name": "exp-s3", "deploy": {"batchSize": 16}}}
    s3_bucket.upload_file(str(model), "models", "runs/exp1/model.onnx")
    s3_bucket.put_object(Bucket="models", Key="runs/exp1/report.json", Body=json.dumps(report).encode())
    s3_bucket.upload_file(str(model), "models", "plain/linear.onnx")
    x = np.ones((2, 4), np.float32)
    with serving("s3://models/runs/exp1") as server:
        assert server.name == "exp-s3"  # the experiment's name
        assert server.app.state.max_batch_size == 16  # the run's deploy batch size
        np.testing.assert_allclose(_infer(server, x), expected(x), rtol=1e-5)
    with serving("s3://models/plain/linear.onnx", name="renamed") as server:
        assert server.name == "renamed"
        np.testing.assert_allclose(_infer(server, x), expected(x), rtol=1e-5)


def test_run_folder_without_report_is_named_after_the_folder(tmp_path):
    folder = tmp_path / "my-run"
    folder.mkdir()
    linear_onnx(folder / "model.onnx")
    with serving(folder) as server:
        assert server.name == "my-run"
        assert server.app.state.max_batch_size == 8  # the default for a dynamic batch dimension
