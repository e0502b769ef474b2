"""End to end on a real control plane: helm install, the operator as the chart's ServiceAccount,
experiments scheduled onto simulated GPU nodes and run by kwok, the real Job controller and
garbage collector.

Order matters only through the module fixtures (chart installed once, operator started once);
every test creates its own experiments.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback_plane import ROOT, Proc, admin_ssl_context, free_port, started
from sparsify_operator import jobset
from sparsify_operator.jobs import job_name
from sparsify_operator.models import GROUP, PLURAL, VERSION
from sparsify_operator.sweep_models import LABEL_SWEEP, SWEEP_PLURAL

from .conftest import (
    FAILING_EXPERIMENT,
    FAILURE_EXIT_CODE,
    FAILURE_MESSAGE,
    GPU_RESOURCE,
    Cluster,
    wait_for,
)

CHART = ROOT / "charts" / "sparsify-operator"
EXAMPLES = ROOT / "examples" / "k8s"
RELEASE, RELEASE_NS = "sparsify", "sparsify-system"
NS = "ml"
TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"
RUN_TIMEOUT_S = 90.0


def _helm_binary() -> str:
    local = ROOT / ".tools" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    pytest.fail("helm is not installed: run `bash scripts/fetch-helm.sh` (extracts .tools/helm)")


def _api(module: str, api):
    from kubernetes import client

    return getattr(client, module)(api)


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


def _status_code(call) -> int:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as exc:
        return exc.status
    return 200


# ---- the chart and the operator ------------------------------------------------------------------


@dataclass
class Release:
    service_account: str
    deployment: dict[str, Any]


@pytest.fixture(scope="module")
def release(cluster: Cluster, admin_api) -> Release:
    """`helm install` of the chart for real; its CRDs Established."""
    proc = subprocess.run(
        [
            _helm_binary(),
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HELM_CACHE_HOME": str(cluster.work / "helm-cache"), "HOME": str(cluster.work)},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ext = _api("ApiextensionsV1Api", admin_api)

    def established():
        crds = [c for c in ext.list_custom_resource_definition().items if c.spec.group == GROUP]
        conds = [{c.type: c.status for c in crd.status.conditions or []} for crd in crds]
        return len(crds) >= 2 and all(c.get("Established") == "True" for c in conds)

    wait_for("the chart's CRDs Established", established, timeout_s=30)
    apps = _api("AppsV1Api", admin_api)
    deps = apps.list_namespaced_deployment(RELEASE_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}")
    assert len(deps.items) == 1, [d.metadata.name for d in deps.items]
    deployment = admin_api.sanitize_for_serialization(deps.items[0])
    return Release(deployment["spec"]["template"]["spec"]["serviceAccountName"], deployment)


@pytest.fixture(scope="module")
def operator_token(cluster: Cluster, admin_api, release: Release) -> str:
    """A token for the chart's ServiceAccount from the TokenRequest API."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    core = _api("CoreV1Api", admin_api)
    resp = core.create_namespaced_service_account_token(release.service_account, RELEASE_NS, request)
    assert resp.status.token
    return resp.status.token


def _operator_argv(deployment: dict[str, Any], liveness_port: int) -> list[str]:
    """The chart's container args, served on loopback: liveness on a free 127.0.0.1 port, no
    metrics server (it would listen on every interface)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith(("--liveness", "--metrics-port"))]
    exe = Path(sys.executable).with_name("sparsify-operator")
    return [str(exe), *args, f"--liveness=http://127.0.0.1:{liveness_port}/healthz", "--metrics-port=0"]


def _operator_env(deployment: dict[str, Any], kubeconfig: Path) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "PYTHONPATH") if k in os.environ}
    return {**keep, **env, "KUBECONFIG": str(kubeconfig)}


@pytest.fixture(scope="module")
def operator(cluster: Cluster, release: Release, operator_token: str) -> Iterator[Proc]:
    """`sparsify-operator` with the chart's args and env, authenticated with the token only."""
    kubeconfig = cluster.token_kubeconfig("operator", operator_token)
    port = free_port()
    proc = Proc(
        "sparsify-operator",
        _operator_argv(release.deployment, port),
        cluster.work / "operator.log",
        env=_operator_env(release.deployment, kubeconfig),
    )

    def ready():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200, f"HTTP {resp.status}"

    started(proc, ready, "sparsify-operator", timeout_s=60)
    cluster.procs[proc.name] = proc  # its log joins the failure messages
    try:
        yield proc
    finally:
        cluster.procs.pop(proc.name)
        proc.stop()
    forbidden = [
        ln for ln in proc.log.read_text(errors="replace").splitlines() if " 403" in ln or "Forbidden" in ln
    ]
    assert not forbidden, "the operator was refused by RBAC:\n" + "\n".join(forbidden[:10])


@pytest.fixture(scope="module")
def namespace(admin_api, release) -> str:
    core = _api("CoreV1Api", admin_api)
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    # the examples name these Secrets; the chart's operator checks that they exist
    for secret in ("s3-credentials", "gcs-hmac"):
        core.create_namespaced_secret(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret},
                "stringData": {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
            },
        )
    wait_for("the default ServiceAccount in ml", lambda: core.list_namespaced_service_account(NS).items)
    return NS


# ---- helpers ------------------------------------------------------------------------------------------


def _apply(admin_api, doc: dict[str, Any], plural: str = PLURAL) -> dict[str, Any]:
    """The client equivalent of `kubectl apply -f` for a new object: create it."""
    return _api("CustomObjectsApi", admin_api).create_namespaced_custom_object(
        GROUP, VERSION, NS, plural, doc
    )


def _experiment(admin_api, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return _api("CustomObjectsApi", admin_api).get_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _phase_is(admin_api, name: str, phase: str):
    def probe():
        exp = _experiment(admin_api, name) or {}
        return exp if (exp.get("status") or {}).get("phase") == phase else None

    return probe


def _job(admin_api, name: str) -> dict[str, Any] | None:
    jobs = _api("BatchV1Api", admin_api).list_namespaced_job(NS, field_selector=f"metadata.name={name}").items
    return admin_api.sanitize_for_serialization(jobs[0]) if jobs else None


def _pods(admin_api, experiment: str) -> list[dict[str, Any]]:
    pods = _api("CoreV1Api", admin_api).list_namespaced_pod(
        NS, label_selector=f"sparsify.dev/experiment={experiment}"
    )
    return [admin_api.sanitize_for_serialization(p) for p in pods.items]


def _true(obj: dict[str, Any]) -> set[str]:
    return {c["type"] for c in (obj.get("status") or {}).get("conditions") or [] if c["status"] == "True"}


def _run(cluster: Cluster, admin_api, doc: dict[str, Any], phase: str) -> dict[str, Any]:
    name = doc["metadata"]["name"]
    _apply(admin_api, doc)
    try:
        return wait_for(f"{name} {phase}", _phase_is(admin_api, name, phase), timeout_s=RUN_TIMEOUT_S)
    except AssertionError as exc:
        status = (_experiment(admin_api, name) or {}).get("status")
        raise AssertionError(f"{exc}\nstatus: {status}\n{cluster.logs()}") from None


# ---- tests -----------------------------------------------------------------------------------------------


def test_chart_installs_for_real(cluster, admin_api, release):
    # helm checked the chart's kubeVersion against the server's /version; RBAC objects exist
    rbac = _api("RbacAuthorizationV1Api", admin_api)
    roles = rbac.list_cluster_role(label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    assert roles, "the chart made no ClusterRole"
    bindings = rbac.list_cluster_role_binding(label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    subjects = [(s.kind, s.name, s.namespace) for b in bindings for s in b.subjects]
    assert ("ServiceAccount", release.service_account, RELEASE_NS) in subjects


def test_operator_token_has_least_privilege(cluster, release, operator_token, namespace):
    with cluster.api_client(token=operator_token) as api:
        custom, core = _api("CustomObjectsApi", api), _api("CoreV1Api", api)
        # what the operator needs works ...
        assert _status_code(lambda: custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)) == 200
        assert _status_code(lambda: _api("BatchV1Api", api).list_namespaced_job(NS)) == 200
        assert _status_code(lambda: core.read_namespaced_secret("s3-credentials", NS)) == 200
        # ... and nothing more: RBAC (not the client) says 403
        assert _status_code(lambda: core.list_namespaced_secret("kube-system")) == 403
        assert _status_code(lambda: core.list_namespaced_secret(NS)) == 403
        assert _status_code(lambda: core.delete_node(cluster.nodes[0])) == 403
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": []}}
        assert _status_code(lambda: core.create_namespaced_pod(NS, pod)) == 403


def test_experiment_runs_on_a_gpu_node_and_succeeds(cluster, admin_api, operator, namespace):
    doc = _example("training-aware.yaml")  # 2 GPUs, an A100 nodeSelector, a toleration
    name = doc["metadata"]["name"]
    exp = _run(cluster, admin_api, doc, "Succeeded")
    status = exp["status"]
    assert status["jobName"] == job_name(name)
    assert {"JobCreated", "Succeeded"} <= _true(exp)
    assert "Running" not in _true(exp)

    job = _job(admin_api, job_name(name))
    assert job is not None
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "SparsifyExperiment",
        name,
        exp["metadata"]["uid"],
    )
    # the real Job controller's terminal status (Kubernetes >= 1.31 rules)
    assert {"SuccessCriteriaMet", "Complete"} <= _true(job)
    assert job["status"]["succeeded"] == 1
    assert job["status"]["startTime"] and job["status"]["completionTime"]
    assert status["completionTime"]

    # kube-scheduler bound the pod to a simulated GPU node with room for 2 GPUs; kwok ran it
    pods = _pods(admin_api, name)
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] in cluster.nodes
    assert pod["status"]["phase"] == "Succeeded"
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits[GPU_RESOURCE] == str(doc["spec"]["gpus"])
    # the CRD's resources.limits.ephemeralStorage under its Kubernetes name
    assert limits["ephemeral-storage"] == doc["spec"]["resources"]["limits"]["ephemeralStorage"]


def test_failing_runner_fails_the_experiment(cluster, admin_api, operator, namespace):
    doc = copy.deepcopy(_example("one-shot.yaml"))
    doc["metadata"]["name"] = FAILING_EXPERIMENT
    doc["spec"]["gpus"] = 1
    exp = _run(cluster, admin_api, doc, "Failed")
    status = exp["status"]
    assert "Failed" in _true(exp)
    assert FAILURE_MESSAGE in status["message"]
    assert f"exit code {FAILURE_EXIT_CODE}" in status["message"]

    # exit code 2 (bad input) matches the Job's podFailurePolicy FailJob rule: no retries
    job = _job(admin_api, job_name(FAILING_EXPERIMENT))
    assert {"FailureTarget", "Failed"} <= _true(job)
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert status["reason"] == "PodFailurePolicy"
    assert len(_pods(admin_api, FAILING_EXPERIMENT)) == 1


def test_printer_columns_as_kubectl_get_shows_them(cluster, admin_api, operator, namespace):
    name = "printer-columns"
    doc = copy.deepcopy(_example("one-shot.yaml"))
    doc["metadata"]["name"] = name
    doc["spec"]["gpus"] = 1
    _run(cluster, admin_api, doc, "Succeeded")
    request = urllib.request.Request(
        f"{cluster.server}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/{name}", headers={"Accept": TABLE}
    )
    with urllib.request.urlopen(request, timeout=10, context=admin_ssl_context(cluster.certs)) as resp:
        table = json.loads(resp.read())
    assert table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:2] == ["Name", "Phase"]
    row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert row["Name"] == name
    assert row["Phase"] == "Succeeded"
    assert row["Type"] == "one-shot"
    assert row["Job"] == job_name(name)


def test_deleting_the_experiment_garbage_collects_its_job(cluster, admin_api, operator, namespace):
    name = "garbage-collected"
    doc = copy.deepcopy(_example("one-shot.yaml"))
    doc["metadata"]["name"] = name
    doc["spec"]["gpus"] = 1
    _run(cluster, admin_api, doc, "Succeeded")
    assert _job(admin_api, job_name(name)) is not None
    _api("CustomObjectsApi", admin_api).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    wait_for(f"{name} deleted", lambda: _experiment(admin_api, name) is None, timeout_s=30)
    # nobody deleted the Job but the garbage collector, following its ownerReference
    wait_for(
        f"Job {job_name(name)} garbage-collected",
        lambda: _job(admin_api, job_name(name)) is None,
        timeout_s=60,
    )
    wait_for(f"pods of {name} garbage-collected", lambda: not _pods(admin_api, name), timeout_s=60)


class ChildWatch:
    """Watches a sweep's child experiments and keeps the most that were unfinished at once."""

    def __init__(self, api, sweep: str):
        from kubernetes import watch

        self._custom = _api("CustomObjectsApi", api)
        self._selector = f"{LABEL_SWEEP}={sweep}"
        self._watch = watch.Watch()
        self.unfinished: set[str] = set()
        self.seen: set[str] = set()
        self.max_unfinished = 0
        self.error: Exception | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:  # the connection closes under a stopped watch: not an error
            if not self._stopping:
                self.error = exc

    def _follow(self) -> None:
        stream = self._watch.stream(
            self._custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NS,
            PLURAL,
            label_selector=self._selector,
            timeout_seconds=int(RUN_TIMEOUT_S),
        )
        for event in stream:
            obj = event["object"]
            name = obj["metadata"]["name"]
            self.seen.add(name)
            if event["type"] == "DELETED" or (obj.get("status") or {}).get("phase") in (
                "Succeeded",
                "Failed",
            ):
                self.unfinished.discard(name)
            else:
                self.unfinished.add(name)
            self.max_unfinished = max(self.max_unfinished, len(self.unfinished))

    def __enter__(self) -> ChildWatch:
        self._thread.start()
        time.sleep(0.5)  # the watch is open before the sweep exists
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._watch.stop()
        self._thread.join(timeout=10)


def test_sweep_fans_out_with_its_parallelism(cluster, admin_api, operator, namespace):
    template = copy.deepcopy(_example("one-shot.yaml"))["spec"]
    template["gpus"] = 1
    levels = [0.2, 0.4, 0.6, 0.8]
    name = "levels"
    sweep = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparsifySweep",
        "metadata": {"name": name},
        "spec": {"template": template, "optimLevels": levels, "parallelism": 2},
    }
    custom = _api("CustomObjectsApi", admin_api)

    def sweep_phase():
        return (
            custom.get_namespaced_custom_object(GROUP, VERSION, NS, SWEEP_PLURAL, name).get("status") or {}
        ).get("phase")

    with ChildWatch(admin_api, name) as children:
        _apply(admin_api, sweep, plural=SWEEP_PLURAL)
        try:
            wait_for("the sweep Succeeded", lambda: sweep_phase() == "Succeeded", timeout_s=RUN_TIMEOUT_S)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.logs()}") from None
    assert children.error is None, f"watching the children failed: {children.error!r}"
    assert len(children.seen) == len(levels)
    # never more than `parallelism` children unfinished at once, and it did run two side by side
    assert children.max_unfinished == 2


def test_cel_rule_rejects_a_bad_experiment_on_the_full_apiserver(cluster, admin_api, release, namespace):
    from kubernetes.client.exceptions import ApiException

    doc = copy.deepcopy(_example("one-shot.yaml"))
    doc["metadata"]["name"] = "no-model"
    del doc["spec"]["experiment"]["model"]
    with pytest.raises(ApiException) as refused:
        _apply(admin_api, doc)
    assert refused.value.status == 422
    assert "one-shot needs spec.experiment.model" in json.loads(refused.value.body)["message"]
    assert _experiment(admin_api, "no-model") is None


def _jobset(admin_api, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return _api("CustomObjectsApi", admin_api).get_namespaced_custom_object(
            jobset.GROUP, jobset.VERSION, NS, jobset.PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env") or []}


def test_multi_node_experiment_runs_as_a_jobset(cluster, admin_api, operator, namespace):
    if cluster.jobset_missing:
        pytest.skip(cluster.jobset_missing)
    doc = _example("training-aware.yaml")
    name = "two-nodes"
    doc["metadata"]["name"] = name
    doc["spec"]["nodes"] = 2
    exp = _run(cluster, admin_api, doc, "Succeeded")
    js_name = jobset.jobset_name(name)
    assert exp["status"]["jobName"] == js_name

    js = _jobset(admin_api, js_name)
    assert js is not None
    owner = js["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("SparsifyExperiment", exp["metadata"]["uid"])
    # JobSet's own controller ran its Job to completion and completed the set
    assert "Completed" in _true(js)

    # two indexed pods with 2 GPUs each, joined by torchrun's environment, on simulated GPU nodes
    pods = _pods(admin_api, name)
    assert len(pods) == 2
    assert all(p["status"]["phase"] == "Succeeded" and p["spec"]["nodeName"] in cluster.nodes for p in pods)
    ranks = sorted(p["metadata"]["annotations"][jobset.COMPLETION_INDEX_ANNOTATION] for p in pods)
    assert ranks == ["0", "1"]
    env = _env(pods[0])
    assert env["PET_NNODES"] == "2"
    assert env["PET_MASTER_ADDR"] == jobset.master_address(js_name)
    limits = pods[0]["spec"]["containers"][0]["resources"]["limits"]
    assert limits[GPU_RESOURCE] == str(doc["spec"]["gpus"])
