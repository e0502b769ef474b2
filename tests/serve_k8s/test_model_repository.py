"""The Triton model repository the runner publishes beside model.onnx: layout, config.pbtxt
(parsed with Triton's own ModelConfig schema and checked against onnxruntime's view of the
model), the atomic publish (marker lists it), and the serving URI in the termination message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import FAST, run_cli, tiny_model
from sparsify_runner import model_repository as mr

ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(float16)": "TYPE_FP16"}


def _agrees_with_onnxruntime(config, model_path: Path) -> None:
    """Names, data types and dims of config.pbtxt == what onnxruntime reports for the model."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    module_types = type(config).DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"]
    type_name = module_types.enum_type.values_by_number
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for tensor, arg in zip(declared, actual, strict=True):
            assert type_name[tensor.data_type].name == ORT_TO_TRITON[arg.type]
            shape = [d if isinstance(d, int) else -1 for d in arg.shape]
            expected = shape[1:] if config.max_batch_size > 0 else shape
            assert list(tensor.dims) == expected


def test_static_model_repository(tmp_path, triton_config):
    staging = tmp_path / "staging"
    staging.mkdir()
    tiny_model(staging / "model.onnx")
    repo = mr.write_model_repository(staging, "model.onnx", experiment_name="Tiny Exp_1", batch_size=8)
    assert repo.name == "tiny-exp-1"
    assert sorted(repo.files) == [
        "model_repository/tiny-exp-1/1/model.onnx",
        "model_repository/tiny-exp-1/config.pbtxt",
    ]
    version_file = staging / "model_repository/tiny-exp-1/1/model.onnx"
    assert version_file.read_bytes() == (staging / "model.onnx").read_bytes()
    config = triton_config((staging / "model_repository/tiny-exp-1/config.pbtxt").read_text())
    assert config.name == "tiny-exp-1" and config.platform == "onnxruntime_onnx"
    # fixed batch dim 1: Triton's ONNX backend cannot batch it, so full shapes and no batching
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 3, 8, 8]
    _agrees_with_onnxruntime(config, version_file)


def test_dynamic_batch_model_repository(tmp_path, triton_config):
    staging = tmp_path / "staging"
    staging.mkdir()
    tiny_model(staging / "model.onnx", batch="N", extra_int64_input=True)
    repo = mr.write_model_repository(staging, "model.onnx", experiment_name=None, batch_size=16)
    assert repo.name == "model" and repo.max_batch_size == 16
    config = triton_config((staging / "model_repository/model/config.pbtxt").read_text())
    assert config.max_batch_size == 16
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [3, 8, 8]), ("ids", [5])]
    assert [t.name for t in config.output] == ["logits", "ids_out"]
    _agrees_with_onnxruntime(config, staging / "model_repository/model/1/model.onnx")


def test_model_names_are_dns_safe():
    assert mr.model_name("ResNet50 / ImageNet (pruned 80%)") == "resnet50-imagenet-pruned-80"
    assert mr.model_name("___") == "model"
    assert mr.model_name("x" * 100) == "x" * 63


def test_unsupported_tensor_type_skips_repository_without_failing(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    staging = tmp_path / "staging"
    staging.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["d"])],
        "cplx",
        [helper.make_tensor_value_info("c", TensorProto.COMPLEX64, [1, 2])],
        [helper.make_tensor_value_info("d", TensorProto.COMPLEX64, [1, 2])],
    )
    onnx.save(helper.make_model(graph), str(staging / "model.onnx"))
    with pytest.raises(ValueError, match="COMPLEX64"):
        mr.write_model_repository(staging, "model.onnx", experiment_name="c", batch_size=1)
    assert not mr.add_to_staging(staging, "model.onnx", experiment_name="c", batch_size=1)
    assert not (staging / "model_repository").exists()
    (staging / "model.onnx").write_bytes(b"not an onnx graph")
    assert not mr.add_to_staging(staging, "model.onnx", experiment_name="c", batch_size=1)
    assert not (staging / "model_repository").exists()


def test_one_shot_run_publishes_repository(static_onnx, calib, tmp_path, capsys, triton_config, monkeypatch):
    """`sparsifyctl run one-shot` end to end: the repository is in the output and the marker,
    the config matches the optimized model, and the termination message names it."""
    import onnxruntime as ort

    term = tmp_path / "termination-log"
    monkeypatch.setenv("SPARSIFY_TERMINATION_LOG", str(term))
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["run", "one-shot", "--name", "Sensor Net", "--use-case", "custom", "--model", str(static_onnx),
         "--data", str(calib), "--optim-level", "0.5", "--output", str(out), "--recipe-args", FAST],
        capsys,
    )
    assert code == 0, err
    version_file = out / "model_repository/sensor-net/1/model.onnx"
    assert version_file.read_bytes() == (out / "model.onnx").read_bytes()
    config = triton_config((out / "model_repository/sensor-net/config.pbtxt").read_text())
    _agrees_with_onnxruntime(config, version_file)
    marker = json.loads((out / "_SUCCESS.json").read_text())
    assert {"model_repository/sensor-net/1/model.onnx", "model_repository/sensor-net/config.pbtxt"} <= set(
        marker["files"]
    )
    assert not list(out.glob(".sparsify-staging*/**/*.onnx"))
    summary = json.loads(term.read_text())
    assert summary["status"] == "succeeded"
    assert summary["servingUri"] == str(out / "model_repository")
    assert json.loads((out / "report.json").read_text())["artifacts"]["serving"] == summary["servingUri"]
    session = ort.InferenceSession(str(version_file), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 3, 8, 8), np.float32)})[0].shape == (1, 4)


def test_s3_run_publishes_repository_under_prefix(static_onnx, calib, s3, tmp_path, monkeypatch, capsys,
                                                  kserve_sdk):
    """A run with an s3:// output (moto on loopback): the repository lands under the prefix,
    listed in the marker, and `generate serve --from s3://...` finds the finished run."""
    import yaml
    from sparsify_runner.contract import RunSummary
    from sparsify_runner.run import run_experiment
    from sparsify_runner.spec import parse_experiment

    s3.create_bucket(Bucket="results")
    term = tmp_path / "termination-log"
    exp = parse_experiment({
        "name": "edge-v2", "type": "one-shot", "useCase": "custom", "model": str(static_onnx),
        "data": str(calib), "optimLevel": 0.2, "recipeArgs": json.loads(FAST), "output": "s3://results/runs/a",
    })
    run_experiment(exp, show_progress=False, termination_log=str(term))
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="results")["Contents"])
    assert {"runs/a/_SUCCESS.json", "runs/a/model.onnx", "runs/a/report.json"} <= set(listed)
    assert [k for k in listed if "model_repository" in k] == [
        "runs/a/model_repository/edge-v2/1/model.onnx",
        "runs/a/model_repository/edge-v2/config.pbtxt",
    ]
    assert not [k for k in listed if ".sparsify-staging" in k]
    marker = json.loads(s3.get_object(Bucket="results", Key="runs/a/_SUCCESS.json")["Body"].read())
    assert "model_repository/edge-v2/config.pbtxt" in marker["files"]
    summary = RunSummary.from_message(term.read_text())
    assert summary.serving_uri == "s3://results/runs/a/model_repository"

    code, stdout, err = run_cli(["generate", "serve", "--from", "s3://results/runs/a"], capsys)
    assert code == 0, err
    isvc = yaml.safe_load(stdout)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == summary.serving_uri
    assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []

    # storage reachable but nothing finished there: one line, exit 2
    code, stdout, err = run_cli(["generate", "serve", "--from", "s3://results/runs/missing"], capsys)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines() == [
        "error: no finished run at s3://results/runs/missing (no _SUCCESS.json); "
        "check --from or wait for the run"
    ]


def test_run_without_repository_is_refused(s3, capsys):
    """A finished run published before model repositories existed: one line saying so."""
    s3.create_bucket(Bucket="old")
    s3.put_object(Bucket="old", Key="runs/r/model.onnx", Body=b"m")
    marker = {"schemaVersion": "1", "files": {"model.onnx": {"size": 1, "sha256": "0" * 64}}}
    s3.put_object(Bucket="old", Key="runs/r/_SUCCESS.json", Body=json.dumps(marker).encode())
    code, stdout, err = run_cli(["generate", "serve", "--from", "s3://old/runs/r"], capsys)
    assert code == 2 and stdout == ""
    assert err.strip() == (
        "error: the run at s3://old/runs/r was published without a model_repository/ (an older runner); "
        "re-run the experiment to get one"
    )
