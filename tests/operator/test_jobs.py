"""The Job builder: pure, deterministic, secure, and valid against the Kubernetes schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from conftest import K8S_VERSION
from sparsify_operator.jobs import SpecError, build_job, job_name, validate_spec
from sparsify_operator.settings import OperatorSettings
from sparsify_runner.spec import load_experiment

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "k8s").glob("*.yaml"))


def _cr(path: Path, **meta) -> dict:
    doc = yaml.safe_load(path.read_text())
    doc["metadata"].update({"namespace": "ml", "uid": "0b7c7f8e-5f53-4f5e-a1d1-0f6c2b0c1d2e", **meta})
    return doc


def _container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_jobs_for_every_example_validate_against_kubernetes_schema(path):
    job = build_job(_cr(path), OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_job_spec_contract():
    cr = _cr(EXAMPLES[0])  # one-shot
    job = build_job(cr, OperatorSettings(pushgateway_url="http://pgw:9091"))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = _container(job)
    # identity, ownership, idempotent name
    assert job["metadata"]["name"] == job_name("mobilenet-one-shot") == "mobilenet-one-shot-sparsify"
    owner = job["metadata"]["ownerReferences"][0]
    assert (
        owner["kind"] == "SparsifyExperiment"
        and owner["controller"]
        and owner["uid"] == cr["metadata"]["uid"]
    )
    # runner contract: inline experiment the runner itself accepts
    assert c["args"][:3] == ["run", "--quiet", "--experiment"]
    exp = load_experiment(c["args"][3])
    assert exp.model == "s3://sparsify/models/mobilenetv2.onnx" and exp.name == "mobilenet-one-shot"
    env = {e["name"]: e for e in c["env"]}
    assert env["SPARSIFY_TERMINATION_LOG"]["value"] == "/dev/termination-log"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc:9000"
    assert env["S3_USE_HTTPS"]["value"] == "0"
    assert env["SPARSIFY_PUSHGATEWAY_URL"]["value"] == "http://pgw:9091"
    assert env["SPARSIFY_EXPERIMENT_NAMESPACE"]["value"] == "ml"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert not any("SECRET" in e["name"] and "value" in e for e in c["env"]), "no credentials inline"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # security
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # failures: preemption ignored, bad input fails fast
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["values"] == [2]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 3600
    assert spec["suspend"] is False
    assert "nvidia.com/gpu" not in json.dumps(c["resources"]), "gpus: 0 means no GPU"


def test_gpu_queue_placement():
    cr = _cr(EXAMPLES[2])  # training-aware: 2 GPUs, node selector, toleration
    job = build_job(cr, OperatorSettings())
    pod = job["spec"]["template"]["spec"]
    assert _container(job)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    queued = build_job(_cr(EXAMPLES[1]), OperatorSettings())  # sparse-transfer with queueName
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml"
    assert queued["spec"]["suspend"] is True, "Kueue admits by unsuspending"
    assert queued["spec"]["template"]["spec"]["priorityClassName"] == "batch-low"


def test_build_job_is_pure_and_deterministic():
    cr = _cr(EXAMPLES[0])
    before = copy.deepcopy(cr)
    assert build_job(cr, OperatorSettings()) == build_job(cr, OperatorSettings())
    assert cr == before


def test_long_names_stay_valid():
    name = "x" * 200
    assert len(job_name(name)) <= 63 and job_name(name) == job_name(name) != job_name("y" * 200)
    job = build_job(_cr(EXAMPLES[0], name=name), OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "/local/model.onnx"}, "spec.experiment.model"),
        ({"output": "./out"}, "spec.experiment.output"),
        ({"data": "ftp://x/y"}, "spec.experiment.data"),
        ({"optimLevel": 1.5}, "spec.experiment.optimLevel"),
    ],
)
def test_invalid_specs_name_the_field(change, field):
    cr = _cr(EXAMPLES[0])
    cr["spec"]["experiment"].update(change)
    with pytest.raises(SpecError) as err:
        validate_spec(cr)
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)


# ---- more than one GPU: torchrun -------------------------------------------------------------


def _by_type(kind: str) -> Path:
    return next(p for p in EXAMPLES if yaml.safe_load(p.read_text())["spec"]["experiment"]["type"] == kind)


@pytest.mark.parametrize("kind", ["training-aware", "sparse-transfer"])
def test_training_with_several_gpus_runs_one_process_per_gpu_under_torchrun(kind):
    cr = _cr(_by_type(kind))
    cr["spec"]["gpus"] = 4
    job = build_job(cr, OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    c = _container(job)
    assert c["command"] == ["torchrun"]
    assert c["args"][:6] == ["--standalone", "--nproc-per-node", "4", "-m", "sparsify_runner.cli", "run"]
    assert c["args"][6:8] == ["--quiet", "--experiment"]
    assert load_experiment(c["args"][8]).type == kind, "the runner accepts the inline experiment"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert not any(e["name"].startswith("PET_") for e in c["env"]), "standalone: no rendezvous env"


@pytest.mark.parametrize("gpus", [0, 1])
def test_training_with_one_gpu_or_none_runs_the_runner_directly(gpus):
    cr = _cr(_by_type("training-aware"))
    cr["spec"]["gpus"] = gpus
    c = _container(build_job(cr, OperatorSettings()))
    assert "command" not in c, "the image's ENTRYPOINT (sparsify-runner)"
    assert c["args"][:3] == ["run", "--quiet", "--experiment"]


def test_one_shot_runs_one_process_whatever_the_gpus():
    cr = _cr(_by_type("one-shot"))
    cr["spec"]["gpus"] = 4
    c = _container(build_job(cr, OperatorSettings()))
    assert "command" not in c and c["args"][:3] == ["run", "--quiet", "--experiment"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_one_shot_on_several_nodes_is_refused_naming_spec_nodes():
    cr = _cr(_by_type("one-shot"))
    cr["spec"]["nodes"] = 2
    with pytest.raises(SpecError) as err:
        validate_spec(cr)
    assert err.value.field == "spec.nodes" and "spec.nodes: 1" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("nodes", "message"), [(0, "greater than or equal to 1"), (65, "less than or equal")]
)
def test_nodes_out_of_range_names_the_field(nodes, message):
    cr = _cr(_by_type("training-aware"))
    cr["spec"]["nodes"] = nodes
    with pytest.raises(SpecError) as err:
        validate_spec(cr)
    assert err.value.field == "spec.nodes" and message in str(err.value)
