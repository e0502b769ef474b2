"""Datatypes other than FP32 through the server: INT64 and BOOL (Where), BYTES (Identity on
strings), in JSON and in the binary extension (tritonclient)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import requests
import tritonclient.http as httpclient
from onnx import TensorProto, helper

from .conftest import serving


@pytest.fixture(scope="module")
def typed_server(tmp_path_factory):
    """ids INT64 [batch, 3], keep BOOL [batch, 3], words BYTES [batch] ->
    kept = Where(keep, ids, 0) INT64, echo = words BYTES."""
    graph = helper.make_graph(
        [
            helper.make_node("Where", ["keep", "ids", "zero"], ["kept"]),
            helper.make_node("Identity", ["words"], ["echo"]),
        ],
        "typed",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 3]),
            helper.make_tensor_value_info("words", TensorProto.STRING, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("kept", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"]),
        ],
        [helper.make_tensor("zero", TensorProto.INT64, [], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("typed") / "typed.onnx"
    onnx.save(model, str(path))
    with serving(path) as running:
        yield running


def _body(ids, keep, words):
    return {
        "inputs": [
            {"name": "ids", "shape": [len(ids), 3], "datatype": "INT64", "data": ids},
            {"name": "keep", "shape": [len(keep), 3], "datatype": "BOOL", "data": keep},
            {"name": "words", "shape": [len(words)], "datatype": "BYTES", "data": words},
        ]
    }


def test_json_int_bool_bytes(typed_server):
    url = f"{typed_server.url}/v2/models/typed/infer"
    body = _body([[1, 2, 3], [2**40, -5, 6]], [[True, False, True], [True, True, False]], ["héllo", "x"])
    r = requests.post(url, json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["kept"]["datatype"] == "INT64" and out["kept"]["data"] == [1, 0, 3, 2**40, -5, 0]
    assert out["echo"]["datatype"] == "BYTES" and out["echo"]["data"] == ["héllo", "x"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body([[1.5, 2, 3]], [[True, True, True]], ["a"]), "INT64: its data must be integers"),
        (_body([[1, 2, 3]], [[1, 0, 1]], ["a"]), "BOOL: its data must be true/false"),
        (_body([[1, 2, 3]], [[True, True, True]], [7]), "BYTES: its data must be strings"),
        (_body([[1, 2, 2**70]], [[True, True, True]], ["a"]), "out of range for INT64"),
        (_body([[1, 2, 3], [4, 5]], [[True] * 3] * 2, ["a", "b"]), "'data' is a ragged nested list"),
    ],
)
def test_json_type_errors(typed_server, body, message):
    r = requests.post(f"{typed_server.url}/v2/models/typed/infer", json=body, timeout=30)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_binary_int_bool_bytes_with_tritonclient(typed_server):
    client = httpclient.InferenceServerClient(typed_server.host)
    ids = np.array([[7, 8, 9]], dtype=np.int64)
    keep = np.array([[False, True, True]])
    words = np.array([b"abc"], dtype=np.object_)
    inputs = []
    for name, arr, dtype in (("ids", ids, "INT64"), ("keep", keep, "BOOL"), ("words", words, "BYTES")):
        item = httpclient.InferInput(name, list(arr.shape), dtype)
        item.set_data_from_numpy(arr, binary_data=True)
        inputs.append(item)
    result = client.infer("typed", inputs)
    np.testing.assert_array_equal(result.as_numpy("kept"), [[0, 8, 9]])
    assert result.as_numpy("echo").tolist() == [b"abc"]


def test_inputs_the_model_rejects_while_running_get_400(typed_server):
    """Shapes that pass the metadata check but not the graph (Where cannot broadcast 2 vs 3
    rows): onnxruntime's error, as a 400 naming the model; the server keeps serving."""
    body = _body([[1, 2, 3]] * 2, [[True, False, True]] * 3, ["a", "b"])
    r = requests.post(f"{typed_server.url}/v2/models/typed/infer", json=body, timeout=30)
    assert r.status_code == 400 and "model 'typed' cannot run this input" in r.json()["error"], r.text
    ok = requests.post(
        f"{typed_server.url}/v2/models/typed/infer", json=_body([[1, 2, 3]], [[True] * 3], ["a"]), timeout=30
    )
    assert ok.status_code == 200
