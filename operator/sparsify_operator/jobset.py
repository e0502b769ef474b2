"""SparsifyExperiment with ``spec.nodes`` N > 1 -> a JobSet (``jobset.x-k8s.io/v1alpha2``). Pure.

One replicated job (``node``) of N indexed pods (``completionMode: Indexed``,
``parallelism = completions = N``), each with ``spec.gpus`` GPUs, behind JobSet's headless
service (``network.enableDNSHostnames``), so pod 0 is reachable as
``<jobset>-node-0-0.<jobset>``. Every pod runs the same command as a one-node multi-GPU Job
(``torchrun -m sparsify_runner.cli run ...``, ``jobs.runner_command``); torchrun reads its
rendezvous from the environment (its ``PET_<FLAG>`` convention, the same variables Kubeflow's
PyTorchJob sets):

- ``PET_NNODES``: N
- ``PET_NPROC_PER_NODE``: processes per pod (one per GPU; one on CPU)
- ``PET_NODE_RANK``: the pod's completion index (downward API, annotation
  ``batch.kubernetes.io/job-completion-index``)
- ``PET_MASTER_ADDR`` / ``PET_MASTER_PORT``: pod 0's DNS name and the port of its TCPStore

torchrun's default (static) rendezvous then joins the N x G processes through pod 0's c10d
TCPStore. A pod that fails fails its Job (``backoffLimit: 0``): the surviving ranks cannot go
on without it, so JobSet restarts the whole set (``failurePolicy.maxRestarts`` =
``runPolicy.backoffLimit``), except for bad input (the Job's pod failure policy ends it with
reason ``PodFailurePolicy``), which fails the JobSet at once.

Why JobSet (not Kubeflow's PyTorchJob or TrainJob): see docs/kubernetes.md.
"""

from __future__ import annotations

from typing import Any

from .jobs import (
    ValidSpec,
    _short,
    child_metadata,
    pod_failure_policy,
    pod_template,
    processes_per_node,
    ttl_seconds,
    validate_spec,
)
from .settings import OperatorSettings

GROUP = "jobset.x-k8s.io"
VERSION = "v1alpha2"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "JobSet"
PLURAL = "jobsets"
REPLICATED_JOB = "node"
MASTER_PORT = 29500
# The JobSet's name, its replicated job's and the pod index make each pod's hostname
# (<jobset>-node-<job index>-<pod index>, at most 63 characters): room for 64 nodes.
NAME_LIMIT = 50
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
LABEL_JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
# The reason the job controller gives a Job that its pod failure policy failed (FailJob).
POD_FAILURE_POLICY_REASON = "PodFailurePolicy"


def jobset_name(experiment_name: str) -> str:
    """Deterministic JobSet name (the same as the Job's unless the experiment's name is long)."""
    return _short(f"{experiment_name}-sparsify", NAME_LIMIT)


def master_address(name: str) -> str:
    """Pod 0's DNS name inside the namespace: ``<hostname>.<subdomain>`` (the headless service)."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}"


def rendezvous_env(name: str, nodes: int, nproc_per_node: int) -> list[dict[str, Any]]:
    """torchrun's rendezvous for pod ``PET_NODE_RANK`` of ``nodes`` (read by ``torchrun`` itself)."""
    index = f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
    return [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(nproc_per_node)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}},
        {"name": "PET_MASTER_ADDR", "value": master_address(name)},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def build_jobset(
    experiment: dict[str, Any], settings: OperatorSettings, *, valid: ValidSpec | None = None
) -> dict[str, Any]:
    """The JobSet for a SparsifyExperiment with ``spec.nodes`` > 1 (raises SpecError as
    ``jobs.build_job`` does)."""
    valid = valid or validate_spec(experiment)
    spec = valid.spec
    meta = experiment.get("metadata") or {}
    name = jobset_name(meta["name"])
    nodes = spec.nodes
    template = pod_template(
        experiment, settings, valid, extra_env=rendezvous_env(name, nodes, processes_per_node(valid))
    )
    template["spec"]["containers"][0]["ports"] = [
        *template["spec"]["containers"][0].get("ports", []),
        {"name": "rendezvous", "containerPort": MASTER_PORT},
    ]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        # One pod down stops every rank: the JobSet restarts all of them (failurePolicy).
        "backoffLimit": 0,
        "podFailurePolicy": pod_failure_policy(),
        "template": template,
    }
    run = spec.run_policy
    if run.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = run.active_deadline_seconds
    jobset_spec: dict[str, Any] = {
        # Kueue admits a queued JobSet (all N pods at once) by unsuspending it.
        "suspend": bool(spec.suspend or spec.queue_name),
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        # What JobSet's mutating webhook would default, written out: a cluster that installed
        # JobSet without its webhook (seen on the test plane) leaves successPolicy nil, and the
        # v0.11 controller dereferences it when the Job completes (panic, the set never finishes).
        "successPolicy": {"operator": "All"},
        "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
        "failurePolicy": {
            "maxRestarts": run.backoff_limit,
            "rules": [
                {
                    "name": "bad-input",
                    "action": "FailJobSet",
                    "onJobFailureReasons": [POD_FAILURE_POLICY_REASON],
                }
            ],
        },
        "replicatedJobs": [
            {
                "name": REPLICATED_JOB,
                "replicas": 1,
                "template": {"metadata": {"labels": dict(template["metadata"]["labels"])}, "spec": job_spec},
            }
        ],
    }
    ttl = ttl_seconds(valid, settings)
    if ttl is not None:
        jobset_spec["ttlSecondsAfterFinished"] = ttl
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": child_metadata(experiment, name, spec),
        "spec": jobset_spec,
    }


def completion_index(pod: dict[str, Any]) -> str | None:
    meta = pod.get("metadata") or {}
    for where in ("annotations", "labels"):
        value = (meta.get(where) or {}).get(COMPLETION_INDEX_ANNOTATION)
        if value is not None:
            return str(value)
    return None
