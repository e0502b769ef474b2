"""The Open Inference Protocol endpoints through the real app and uvicorn, checked with the
Triton HTTP client (tritonclient) and plain HTTP for the error cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import expected, metric, serving


@pytest.fixture(scope="module")
def server(linear_model):
    with serving(linear_model, max_request_bytes=4096) as running:
        yield running


def _infer_url(server, name: str | None = None) -> str:
    return f"{server.url}/v2/models/{name or server.name}/infer"


def test_health_and_metadata_with_tritonclient(server):
    client = httpclient.InferenceServerClient(server.host)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(server.name)
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata(server.name)
    assert meta["name"] == "linear" == server.name  # default name: the file stem
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    server_meta = client.get_server_metadata()
    assert "binary_tensor_data" in server_meta["extensions"]
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert "unknown model 'nope'" in str(err.value)


@pytest.mark.parametrize("binary", [False, True])
def test_infer_with_tritonclient(server, binary):
    client = httpclient.InferenceServerClient(server.host)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    item = httpclient.InferInput("x", [5, 4], "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        server.name,
        [item],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
        request_id="r1",
    )
    np.testing.assert_allclose(result.as_numpy("y"), expected(x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == server.name and response["id"] == "r1"
    # no outputs named: tritonclient asks for all of them in binary
    result = client.infer(server.name, [item])
    np.testing.assert_allclose(result.as_numpy("y"), expected(x), rtol=1e-5, atol=1e-6)


def test_infer_plain_json_nested_data(server):
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [0, 0, 0, 1]]}]
    }
    r = requests.post(_infer_url(server), json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "y" and out["shape"] == [2, 3] and out["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.array(out["data"]).reshape(2, 3), expected(np.array([[1, 2, 3, 4], [0, 0, 0, 1]]))
    )
    # the versioned route answers the same
    r = requests.post(f"{server.url}/v2/models/{server.name}/versions/1/infer", json=body, timeout=30)
    assert r.status_code == 200


def _x(**overrides):
    item = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
    item.update(overrides)
    return {"inputs": [item]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (_x(datatype="FP64"), 400, "has datatype FP64 but model 'linear' expects FP32"),
        (_x(datatype="FLOAT"), 400, "unknown datatype 'FLOAT'"),
        (_x(shape=[1, 5], data=[1, 2, 3, 4, 5]), 400, "has shape [1, 5] but the model expects [-1, 4]"),
        (_x(shape=[4]), 400, "has shape [4] but the model expects [-1, 4]"),
        (_x(shape=[2, 4]), 400, "has 4 data elements but shape [2, 4] needs 8"),
        (_x(data=["a", "b", "c", "d"]), 400, "its data must be numbers"),
        (_x(name="z"), 400, "unknown input 'z'"),
        (_x(data=None), 400, "has no 'data'"),
        ({"inputs": []}, 400, "invalid inference request: inputs"),
        ({"inputs": [{"name": "x"}]}, 400, "invalid inference request: inputs.0.shape"),
        ({**_x(), "outputs": [{"name": "nope"}]}, 400, "unknown output 'nope'"),
        ([1, 2], 400, "must be a JSON object"),
    ],
)
def test_bad_requests_get_protocol_errors(server, body, status, message):
    r = requests.post(_infer_url(server), json=body, timeout=30)
    assert r.status_code == status
    assert message in r.json()["error"]
    assert "Traceback" not in r.text


def test_bad_json_unknown_model_and_routes(server):
    r = requests.post(_infer_url(server), data=b'{"inputs": [', timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = requests.post(_infer_url(server, "other"), json=_x(), timeout=30)
    assert r.status_code == 404 and r.json() == {
        "error": "unknown model 'other'; this server serves 'linear'"
    }
    r = requests.get(f"{server.url}/v2/models/linear/versions/7", timeout=30)
    assert r.status_code == 404 and "unknown version '7'" in r.json()["error"]
    r = requests.get(f"{server.url}/v2/nothing-here", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    r = requests.post(f"{server.url}/predict", json={"text": "hi"}, timeout=30)
    assert r.status_code == 404 and "--task" in r.json()["error"]


def test_binary_extension_errors(server):
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
            ]
        }
    ).encode()
    good = np.arange(4, dtype=np.float32).tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    r = requests.post(_infer_url(server), data=header + good, headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == pytest.approx(
        expected(np.arange(4.0)[None])[0].tolist()
    )
    r = requests.post(_infer_url(server), data=header + good[:12], headers=headers, timeout=30)
    assert r.status_code == 400 and "runs past the end of the body" in r.json()["error"]
    r = requests.post(_infer_url(server), data=header + good + b"xx", headers=headers, timeout=30)
    assert r.status_code == 400 and "no input claims" in r.json()["error"]
    r = requests.post(
        _infer_url(server), data=header, headers={"Inference-Header-Content-Length": "99999"}, timeout=30
    )
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_oversize_request_is_refused_with_413(server):
    big = _x(shape=[300, 4], data=[0.5] * 1200)  # ~4.6 kB of JSON, over the 4096-byte limit
    r = requests.post(_infer_url(server), json=big, timeout=30)
    assert r.status_code == 413 and "over the limit of 4096 bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    r = requests.post(_infer_url(server), data=chunks(), timeout=30)
    assert r.status_code == 413
    small = _x()
    r = requests.post(_infer_url(server), data=iter([json.dumps(small).encode()]), timeout=30)
    assert r.status_code == 200, r.text


def test_metrics_count_requests_and_latency(server):
    def scrape() -> str:
        return requests.get(f"{server.url}/metrics", timeout=30).text

    labels = {"model": "linear", "endpoint": "/v2/models/{name}/infer"}
    before_ok = metric(scrape(), "sparsify_serve_requests_total", code="200", **labels)
    before_bad = metric(scrape(), "sparsify_serve_requests_total", code="400", **labels)
    before_hist = metric(scrape(), "sparsify_serve_request_duration_seconds_count", **labels)
    for _ in range(3):
        assert requests.post(_infer_url(server), json=_x(), timeout=30).status_code == 200
    assert requests.post(_infer_url(server), json=_x(datatype="INT8"), timeout=30).status_code == 400
    text = scrape()
    assert metric(text, "sparsify_serve_requests_total", code="200", **labels) == before_ok + 3
    assert metric(text, "sparsify_serve_requests_total", code="400", **labels) == before_bad + 1
    assert metric(text, "sparsify_serve_request_duration_seconds_count", **labels) == before_hist + 4
    assert metric(text, "sparsify_serve_batch_size_count", model="linear") > 0
