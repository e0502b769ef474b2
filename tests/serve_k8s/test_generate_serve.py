"""`sparsifyctl generate serve --from s3://run`: offline generation, KServe schema validation
(KServe 0.21.0's own SDK types), the ServiceAccount that names the S3 Secret, bad flags."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from serve_helpers import run_cli

RUN = "s3://results/runs/exp1"


def _docs(stdout: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(stdout) if d]


def _check_kserve_requirements(isvc: dict, storage_uri: str) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"] == storage_uri


def test_offline_from_s3_run_is_valid_kserve(no_storage_env, capsys, kserve_sdk):
    code, stdout, err = run_cli(
        ["generate", "serve", "--from", RUN, "--secret", "s3-creds", "--endpoint", "http://minio.storage:9000",
         "--region", "eu-west-1", "--service-account", "kserve-s3", "-n", "ml", "--runtime",
         "kserve-tritonserver", "--gpus", "1", "--cpu", "2", "--memory", "4Gi", "--memory-limit", "8Gi",
         "--node-selector", "pool=gpu"],
        capsys,
    )
    assert code == 0, err
    account, isvc = _docs(stdout)
    assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
    assert kserve_sdk.validate(account, "V1ServiceAccount") == []
    _check_kserve_requirements(isvc, f"{RUN}/model_repository")
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "kserve-s3" == account["metadata"]["name"]
    assert predictor["nodeSelector"] == {"pool": "gpu"}
    assert predictor["model"]["runtime"] == "kserve-tritonserver"
    assert predictor["model"]["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert isvc["metadata"]["name"] == "exp1" and isvc["metadata"]["namespace"] == "ml"
    assert account["secrets"] == [{"name": "s3-creds"}]
    assert account["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio.storage:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "eu-west-1",
    }
    # the same settings for the Secret, as a command on stderr; never any credential
    hint = "note: KServe reads S3 settings from the Secret too: kubectl annotate secret s3-creds -n ml "
    assert err.startswith(hint)
    assert "AWS_SECRET" not in stdout + err and "stringData" not in stdout


def test_defaults_and_json(no_storage_env, capsys, kserve_sdk):
    code, stdout, err = run_cli(
        ["generate", "serve", "--from", f"{RUN}/model_repository/", "--name", "edge", "--format", "json"],
        capsys,
    )
    assert code == 0, err
    assert err == ""
    isvc = json.loads(stdout)
    assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
    _check_kserve_requirements(isvc, f"{RUN}/model_repository")
    model = isvc["spec"]["predictor"]["model"]
    assert "runtime" not in model  # KServe picks the runtime for onnx / v2 (Triton)
    assert "resources" not in model  # --gpus defaults to 0 for serving from a run prefix
    assert "serviceAccountName" not in isvc["spec"]["predictor"]
    assert isvc["metadata"]["name"] == "edge" and "namespace" not in isvc["metadata"]

    code, stdout, _ = run_cli(
        ["generate", "serve", "--from", RUN, "--secret", "s3-creds", "--format", "json"], capsys
    )
    assert code == 0
    listed = json.loads(stdout)
    assert listed["kind"] == "List"
    assert [d["kind"] for d in listed["items"]] == ["ServiceAccount", "InferenceService"]
    assert listed["items"][1]["spec"]["predictor"]["serviceAccountName"] == "exp1-storage"


def test_validator_rejects_what_kserve_would(no_storage_env, capsys, kserve_sdk):
    """The schema check can fail: typos, wrong types and unknown nested fields are reported."""
    code, stdout, _ = run_cli(["generate", "serve", "--from", RUN, "--gpus", "2"], capsys)
    assert code == 0
    good = yaml.safe_load(stdout)
    bad = copy.deepcopy(good)
    model = bad["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    model["modelFormat"]["version"] = 1
    model["resources"]["limits"]["nvidia.com/gpu"] = 2
    bad["spec"]["predictor"]["minReplicas"] = "1"
    bad["metadata"]["labelz"] = {}
    assert sorted(kserve_sdk.validate(bad, "V1beta1InferenceService")) == [
        "$.metadata.labelz: unknown field of V1ObjectMeta",
        "$.spec.predictor.minReplicas: expected int, got str '1'",
        "$.spec.predictor.model.modelFormat.version: expected str, got int 1",
        "$.spec.predictor.model.resources.limits.nvidia.com/gpu: expected str, got int 2",
        "$.spec.predictor.model.storageURI: unknown field of V1beta1ModelSpec",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "error: generate serve needs --from NAMESPACE/EXPERIMENT or --from s3://bucket/run"),
        (["--from", "/tmp/run"], "error: --from '/tmp/run' must be NAMESPACE/EXPERIMENT or an s3://bucket/run"),
        (["--from", "https://x/run"], "error: --from 'https://x/run' must be NAMESPACE/EXPERIMENT or an s3://"),
        (["--from", RUN, "--name", "Edge_1"], "error: --name 'Edge_1' is not a valid Kubernetes name"),
        (["--from", RUN, "--runtime", "kserve-sklearnserver"], "error: --runtime 'kserve-sklearnserver'"),
        (["--from", RUN, "--runtime", "Bad Runtime"], "error: --runtime 'Bad Runtime' is not a valid"),
        (["--from", RUN, "--gpus", "99"], "error: --gpus must be between 0 and 16, got 99"),
        (["--from", RUN, "--cpu", "lots"], "error: --cpu 'lots' is not a Kubernetes quantity"),
        (["--from", RUN, "--model", "m.onnx"], "error: --model does not apply to `generate serve`"),
        (["--from", RUN, "--queue", "q"], "error: --queue does not apply to `generate serve`"),
        (["--from", RUN, "--secret", "s3", "--endpoint", "://"], "error: --endpoint '://' is not a URL"),
        (["--from", RUN, "--secret", "s3", "--service-account", "Bad_SA"], "error: --service-account "),
        (["--from", "a/b/c"], "error: --from 'a/b/c' must be NAMESPACE/EXPERIMENT"),
    ],
)
def test_bad_flags_exit_2_with_one_line(no_storage_env, capsys, argv, message):
    code, stdout, err = run_cli(["generate", "serve", *argv], capsys)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_serve_flags_belong_to_serve(capsys):
    flags = ["--use-case", "ic", "--model", "s3://m/m.onnx", "--data", "s3://d/", "--output", "s3://o/x"]
    code, stdout, err = run_cli(["generate", "one-shot", *flags, "--runtime", "x"], capsys)
    assert code == 2 and err.strip() == "error: --runtime applies only to `generate serve`"
    # experiments keep their own default (a one-shot for a CPU deploy target: no GPU)
    code, stdout, err = run_cli(["generate", "one-shot", *flags], capsys)
    assert code == 0, err
    assert yaml.safe_load(stdout)["spec"]["gpus"] == 0


def test_unreachable_storage_still_generates_silently(monkeypatch, capsys, kserve_sdk):
    from rio_helpers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    code, stdout, err = run_cli(["generate", "serve", "--from", RUN], capsys)
    assert code == 0 and err == ""
    isvc = yaml.safe_load(stdout)
    assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
    _check_kserve_requirements(isvc, f"{RUN}/model_repository")


def test_source_helpers():
    from sparsify_operator import inference_service as isvc
    from sparsify_runner import model_repository

    assert isvc.REPOSITORY_DIR == model_repository.REPOSITORY_DIR
    assert isvc.repository_uri("s3://b") == "s3://b/model_repository"
    assert isvc.repository_uri("s3://b/runs/x/") == "s3://b/runs/x/model_repository"
    assert isvc.repository_uri("s3://b/runs/x/model_repository") == "s3://b/runs/x/model_repository"
    assert isvc.run_prefix("s3://b/runs/x/model_repository") == "s3://b/runs/x"
    assert isvc.default_name("2024 ResNet_50") == "resnet-50"
    assert isvc.default_name("__") == "sparsified-model"
    assert isvc.s3_annotations("s3.eu.example.com", None) == {
        "serving.kserve.io/s3-endpoint": "s3.eu.example.com",
        "serving.kserve.io/s3-usehttps": "1",
    }
    assert isvc.parse_ref("exp", "team") == ("team", "exp")
    assert isvc.parse_ref("ns/exp", None) == ("ns", "exp")


def test_missing_sdk_is_a_clear_failure(tmp_path, monkeypatch, kserve_sdk):
    monkeypatch.setattr(kserve_sdk, "SDK_DIR", tmp_path / "none")
    monkeypatch.setattr(kserve_sdk, "MODELS_DIR", tmp_path / "none" / "kserve" / "models")
    message = kserve_sdk.sdk_missing()
    assert "KServe SDK models are missing" in message
    assert message.endswith("run `bash scripts/fetch-kserve-sdk.sh` (part of `make test-deps`)")


def test_fetch_script_is_a_quick_no_op_when_present(kserve_sdk):
    import subprocess

    script = kserve_sdk.ROOT / "scripts" / "fetch-kserve-sdk.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("kserve SDK models already present")
