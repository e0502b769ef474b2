"""``spec.nodes`` > 1: the JobSet builder (pure, valid against JobSet's CRD schema and, for its
Job template, the Kubernetes schema) and the JobSet -> experiment status mapping."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import K8S_VERSION
from sparsify_operator import jobset
from sparsify_operator.jobs import build_job
from sparsify_operator.jobset import build_jobset, jobset_name, master_address
from sparsify_operator.settings import OperatorSettings
from sparsify_operator.status import job_observed, jobset_not_installed
from sparsify_runner.contract import RunSummary
from sparsify_runner.spec import load_experiment

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ROOT / "examples" / "k8s" / "training-aware.yaml"
PLANE_DIR = Path(os.environ.get("SPARSIFY_CONTROL_PLANE_DIR", ROOT / ".tools" / "control-plane" / "current"))


def _jobset_schema() -> dict[str, Any] | None:
    """JobSet's v1alpha2 schema from the CRD that `make test-deps` copies out of the jobset module
    (scripts/build-control-plane.sh), never a committed copy; None where it was not built."""
    crds = sorted((PLANE_DIR / "jobset-crds").glob("*.yaml"))
    if not crds:
        return None
    crd = yaml.safe_load(crds[0].read_text(encoding="utf-8"))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == jobset.VERSION]
    return version["schema"]["openAPIV3Schema"]


SCHEMA = _jobset_schema()
NOW = "2026-01-01T00:00:00Z"


def _cr(nodes: int = 3, gpus: int = 2, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(TRAINING.read_text())
    doc["metadata"].update(
        {"namespace": "ml", "uid": "0b7c7f8e-5f53-4f5e-a1d1-0f6c2b0c1d2e", "generation": 1}
    )
    doc["spec"].update({"nodes": nodes, "gpus": gpus, **spec})
    return doc


def _unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the CRD schema does not declare (the API server would prune them silently)."""
    if isinstance(obj, dict) and "properties" in schema:
        out = []
        for key, value in obj.items():
            if key not in schema["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += _unknown_fields(value, schema["properties"][key], f"{path}.{key}")
        return out
    if isinstance(obj, list) and "items" in schema:
        return [
            f for i, item in enumerate(obj) for f in _unknown_fields(item, schema["items"], f"{path}[{i}]")
        ]
    return []


def _validate(js: dict[str, Any]) -> None:
    if SCHEMA is None:
        pytest.skip(f"JobSet's CRD was not built ({PLANE_DIR / 'jobset-crds'}): run make test-deps")
    jsonschema.validate(js, SCHEMA)
    assert _unknown_fields(js, SCHEMA) == []
    for rj in js["spec"]["replicatedJobs"]:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "x"},
            "spec": rj["template"]["spec"],
        }
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def _container(js: dict[str, Any]) -> dict[str, Any]:
    return js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]


def test_jobset_contract():
    cr = _cr(nodes=3, gpus=2)
    js = build_jobset(cr, OperatorSettings())
    _validate(js)
    assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and js["kind"] == "JobSet"
    name = js["metadata"]["name"]
    assert name == jobset_name("resnet-training-aware") == "resnet-training-aware-sparsify"
    owner = js["metadata"]["ownerReferences"][0]
    assert (
        owner["kind"] == "SparsifyExperiment"
        and owner["controller"]
        and owner["uid"] == cr["metadata"]["uid"]
    )
    assert js["metadata"]["labels"]["sparsify.dev/experiment-uid"] == cr["metadata"]["uid"]
    spec = js["spec"]
    assert spec["network"]["enableDNSHostnames"] is True, "pod 0 needs a DNS name"
    assert spec["suspend"] is False
    assert spec["failurePolicy"]["maxRestarts"] == cr["spec"]["runPolicy"]["backoffLimit"]
    assert spec["failurePolicy"]["rules"][0]["action"] == "FailJobSet"
    assert spec["failurePolicy"]["rules"][0]["onJobFailureReasons"] == ["PodFailurePolicy"]
    [rj] = spec["replicatedJobs"]
    assert rj["replicas"] == 1
    job = rj["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 3
    assert job["backoffLimit"] == 0, "a lost rank restarts the whole set, not one pod"
    assert job["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] == [2]
    c = _container(js)
    # the same command as a one-node multi-GPU Job, with the rendezvous from PET_* instead of --standalone
    assert c["command"] == ["torchrun"]
    assert c["args"][:5] == ["-m", "sparsify_runner.cli", "run", "--quiet", "--experiment"]
    assert "--standalone" not in c["args"]
    assert load_experiment(c["args"][5]).type == "training-aware"
    env = {e["name"]: e for e in c["env"]}
    assert env["PET_NNODES"]["value"] == "3"
    assert env["PET_NPROC_PER_NODE"]["value"] == "2"
    assert env["PET_NODE_RANK"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["PET_MASTER_ADDR"]["value"] == f"{name}-node-0-0.{name}" == master_address(name)
    assert env["PET_MASTER_PORT"]["value"] == "29500"
    assert {"name": "rendezvous", "containerPort": 29500} in c["ports"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2", "spec.gpus is per pod"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"], "the Job's environment too"


def test_cpu_nodes_run_one_process_each():
    js = build_jobset(_cr(nodes=2, gpus=0), OperatorSettings())
    _validate(js)
    env = {e["name"]: e.get("value") for e in _container(js)["env"]}
    assert env["PET_NPROC_PER_NODE"] == "1" and env["PET_NNODES"] == "2"
    assert "nvidia.com/gpu" not in json.dumps(_container(js)["resources"])


def test_queued_jobset_carries_the_kueue_label_and_starts_suspended():
    js = build_jobset(_cr(queueName="team-ml"), OperatorSettings())
    assert js["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml"
    assert js["spec"]["suspend"] is True, "Kueue admits all pods at once by unsuspending"
    assert (
        "kueue.x-k8s.io/queue-name" not in js["spec"]["replicatedJobs"][0]["template"]["metadata"]["labels"]
    )


def test_jobset_is_pure_and_deterministic():
    cr = _cr()
    before = copy.deepcopy(cr)
    assert build_jobset(cr, OperatorSettings()) == build_jobset(cr, OperatorSettings())
    assert cr == before


def test_long_names_leave_room_for_pod_hostnames():
    name = jobset_name("x" * 200)
    assert name == jobset_name("x" * 200) != jobset_name("y" * 200)
    # JobSet names pods (and their hostnames) <jobset>-<replicated job>-<job index>-<pod index>
    assert len(f"{name}-{jobset.REPLICATED_JOB}-0-63") <= 63
    js = build_jobset(_cr(), OperatorSettings())
    _validate(js)


def test_the_job_and_the_jobset_run_the_same_pod_but_the_rendezvous():
    """What a one-node Job and each JobSet pod run differs only in how torchrun meets its peers."""
    job_c = build_job(_cr(nodes=1, gpus=2), OperatorSettings())["spec"]["template"]["spec"]["containers"][0]
    js_c = _container(build_jobset(_cr(nodes=2, gpus=2), OperatorSettings()))
    assert job_c["args"][:3] == ["--standalone", "--nproc-per-node", "2"]
    assert job_c["args"][3:] == js_c["args"][:5] + [job_c["args"][8]]
    assert [e for e in js_c["env"] if not e["name"].startswith("PET_")] == job_c["env"]


# ---- status -----------------------------------------------------------------------------------


def _jobset_status(conditions: list[dict[str, Any]] = (), **status: Any) -> dict[str, Any]:
    js = build_jobset(_cr(), OperatorSettings())
    js["status"] = {"conditions": list(conditions), **status}
    return js


def _pod(index: int, message: str, created: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"p{index}",
            "creationTimestamp": created,
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "runner", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ],
        },
    }


def test_completed_jobset_takes_the_results_of_node_rank_0():
    cr = _cr()
    done = [{"type": "Completed", "status": "True", "lastTransitionTime": NOW, "reason": "AllJobsCompleted"}]
    leader = RunSummary(status="succeeded", model_uri="s3://out/model.onnx", speedup=1.7).to_message()
    other = RunSummary(status="succeeded").to_message()
    pods = [_pod(0, leader, "2026-01-01T00:00:00Z"), _pod(1, other, "2026-01-01T00:00:05Z")]
    update = job_observed(cr, _jobset_status(done, restarts=1), pods, NOW)
    assert update.phase == "Succeeded"
    assert update.patch["results"]["speedup"] == 1.7 and "s3://out/model.onnx" in update.patch["message"]
    assert update.patch["attempts"] == 2, "one restart: two attempts"
    assert update.patch["completionTime"] == NOW


def test_failed_jobset_reports_its_condition():
    failed = [
        {
            "type": "Failed",
            "status": "True",
            "reason": "ReachedMaxRestarts",
            "message": "jobset failed due to reaching max number of restarts",
            "lastTransitionTime": NOW,
        }
    ]
    update = job_observed(_cr(), _jobset_status(failed, restarts=2), [], NOW)
    assert update.phase == "Failed" and update.patch["reason"] == "ReachedMaxRestarts"
    assert "max number of restarts" in update.patch["message"]
    assert update.events and update.events[0][0] == "Warning"


@pytest.mark.parametrize(
    ("spec", "phase", "reason"),
    [({"suspend": True}, "Suspended", "Suspended"), ({"queueName": "q"}, "Pending", "Queued")],
)
def test_suspended_jobset(spec, phase, reason):
    cr = _cr(**spec)
    js = _jobset_status([{"type": "Suspended", "status": "True", "lastTransitionTime": NOW, "reason": "x"}])
    update = job_observed(cr, js, [], NOW)
    assert (update.phase, update.patch["reason"]) == (phase, reason)
    assert "JobSet" in update.patch["message"]


def test_running_jobset():
    js = _jobset_status(
        replicatedJobsStatus=[{"name": "node", "ready": 1, "active": 1, "succeeded": 0, "failed": 0}]
    )
    update = job_observed(_cr(), js, [], NOW)
    assert update.phase == "Running" and update.patch["message"].startswith("JobSet ")
    assert update.patch["attempts"] == 1


def test_missing_jobset_crd_is_one_line_naming_spec_nodes_and_the_fix():
    update = jobset_not_installed({}, 4, generation=3, now=NOW)
    assert update.phase == "Failed" and update.patch["reason"] == "JobSetNotInstalled"
    message = update.patch["message"]
    assert message.startswith("spec.nodes: 4 nodes") and "install JobSet" in message and "\n" not in message
    conds = {c["type"]: c["status"] for c in update.patch["conditions"]}
    assert conds == {"JobCreated": "False", "Failed": "True"}


def test_a_sweep_template_with_nodes_gives_every_point_a_jobset():
    from sparsify_operator.sweep_reconcile import plan

    template = _cr(nodes=2, gpus=4)["spec"]
    sweep = {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifySweep",
        "metadata": {"name": "grid", "namespace": "ml", "uid": "s-1", "generation": 1},
        "spec": {"template": template, "optimLevels": [0.4, 0.6], "parallelism": 2},
    }
    children = plan(sweep, []).create
    assert len(children) == 2
    for child in children:
        assert child["spec"]["nodes"] == 2
        js = build_jobset({**child, "metadata": {**child["metadata"], "uid": "c-1"}}, OperatorSettings())
        assert js["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == 2
