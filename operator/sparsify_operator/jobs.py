"""SparsifyExperiment -> batch/v1 Job manifest. Pure: no cluster, no kubernetes import.

Use it without a cluster (tests, the runner-I/O end-to-end test)::

    from sparsify_operator.jobs import build_job
    from sparsify_operator.settings import OperatorSettings

    job = build_job(experiment_object, OperatorSettings())   # experiment_object: the CR as a dict
    container = job["spec"]["template"]["spec"]["containers"][0]
    cmd = [*container.get("command", ["sparsify-runner"]), *container["args"]]
    env = {e["name"]: e.get("value") for e in container["env"]}   # secretKeyRef entries -> None

``container["command"]`` is absent (the image's ENTRYPOINT is ``sparsify-runner``); the
experiment travels inline in ``args`` (``run --quiet --experiment <json>``). With ``spec.gpus``
G > 1 a training experiment (training-aware, sparse-transfer) runs one process per GPU:
``command`` is ``["torchrun"]`` and ``args`` ``--standalone --nproc-per-node G -m
sparsify_runner.cli run ...`` (one-shot stays one process). ``spec.nodes`` > 1 is a JobSet
(``jobset.py``) whose pods run the same command with the rendezvous in ``PET_*``. Environment
variables: ``SPARSIFY_TERMINATION_LOG``, ``SPARSIFY_EXPERIMENT_NAME``/``_NAMESPACE``,
``SPARSIFY_METRICS_PORT``, ``SPARSIFY_PUSHGATEWAY_URL``, ``AWS_ENDPOINT_URL``,
``AWS_REGION``, ``S3_USE_HTTPS``, ``S3_VERIFY_SSL``, ``HOME``, ``SPARSIFY_CACHE_DIR`` and the
credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) from
the Secret named in ``spec.storage.secretRef`` (``valueFrom.secretKeyRef``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sparsify_runner.errors import EXIT_BAD_INPUT
from sparsify_runner.spec import TEXT_GENERATION, Experiment, uri_scheme

from .models import API_VERSION, KIND, SparsifyExperimentSpec
from .settings import OperatorSettings

CONTAINER = "runner"
LABEL_EXPERIMENT = "sparsify.dev/experiment"
LABEL_UID = "sparsify.dev/experiment-uid"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "sparsify-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CLUSTER_SCHEMES = ("s3", "http", "https")
SECRET_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False), ("AWS_SESSION_TOKEN", True))
TERMINATION_LOG = "/dev/termination-log"
SCRATCH = "/scratch"
# More than one process: torchrun starts the runner's CLI module once per GPU (training only).
TORCHRUN = "torchrun"
RUNNER_MODULE = "sparsify_runner.cli"
DISTRIBUTED_TYPES = ("training-aware", "sparse-transfer")
MODEL_CACHE = "/model-cache"
MODEL_CACHE_VOLUME = "model-cache"
HF_TOKEN_ENV = "HF_TOKEN"


class SpecError(ValueError):
    """A spec the operator cannot run: ``field`` is the spec path, ``str()`` one line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ValidSpec:
    spec: SparsifyExperimentSpec
    experiment: Experiment


def _short(value: str, limit: int) -> str:
    """Deterministic shortening (DNS-label safe) with a hash suffix when too long."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[: limit - 9].rstrip('-.')}-{digest}"


def job_name(experiment_name: str) -> str:
    """Deterministic Job name: one experiment, one Job name, across restarts."""
    return _short(f"{experiment_name}-sparsify", 63)


def label_value(value: str) -> str:
    return _short(value, 63)


def _field_path(loc: tuple[Any, ...]) -> str:
    return "spec." + ".".join(str(p) for p in loc)


def validate_spec(experiment: dict[str, Any]) -> ValidSpec:
    """Check what the API server's schema cannot: runnable in a cluster. Raises SpecError."""
    raw = experiment.get("spec") or {}
    try:
        spec = SparsifyExperimentSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        loc = first["loc"]
        # pydantic reports model-level validators at the model's own location
        return_field = _field_path(loc) if loc else "spec"
        raise SpecError(return_field, msg) from None
    exp = spec.experiment
    if uri_scheme(exp.output) != "s3":
        raise SpecError("spec.experiment.output", f"'{exp.output}' must be an s3:// prefix in a cluster")
    for name in ("model", "data", "teacher", "recipe", "catalog"):
        uri = getattr(exp, name)
        if uri is None:
            continue
        scheme = uri_scheme(uri)
        wire = Experiment.model_fields[name].alias or name
        if scheme not in CLUSTER_SCHEMES:
            raise SpecError(
                f"spec.experiment.{wire}",
                f"'{uri}' is a local path, which a cluster Job cannot read; use s3:// or https://",
            )
    if spec.nodes > 1 and exp.type not in DISTRIBUTED_TYPES:
        raise SpecError(
            "spec.nodes",
            f"{exp.type.value} runs in one process on one node; set spec.nodes: 1 "
            "(more nodes serve training-aware and sparse-transfer)",
        )
    return ValidSpec(spec, exp)


def _env(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


# the CRD's camelCase field -> the Kubernetes resource name (a real API server refuses the Job with
# "ephemeralStorage: must be a standard resource type")
_RESOURCE_NAMES = {"ephemeralStorage": "ephemeral-storage"}


def _resources(spec: SparsifyExperimentSpec, settings: OperatorSettings) -> dict[str, Any]:
    out: dict[str, dict[str, str]] = {}
    for part in ("requests", "limits"):
        values = getattr(spec.resources, part).model_dump(by_alias=True, exclude_none=True)
        if values:
            out[part] = {_RESOURCE_NAMES.get(k, k): v for k, v in values.items()}
    if spec.gpus:
        out.setdefault("limits", {})[settings.gpu_resource] = str(spec.gpus)
    return out


def _container_env(
    meta: dict[str, Any], spec: SparsifyExperimentSpec, settings: OperatorSettings
) -> list[dict[str, Any]]:
    env = [
        _env("SPARSIFY_TERMINATION_LOG", TERMINATION_LOG),
        _env("SPARSIFY_EXPERIMENT_NAME", meta.get("name", "")),
        _env("SPARSIFY_EXPERIMENT_NAMESPACE", meta.get("namespace", "default")),
        _env("SPARSIFY_NO_PROGRESS", "1"),
        _env("HOME", SCRATCH),
        _env("SPARSIFY_CACHE_DIR", f"{SCRATCH}/cache"),
        _env("TMPDIR", SCRATCH),
    ]
    if settings.runner_metrics_port:
        env.append(_env("SPARSIFY_METRICS_PORT", settings.runner_metrics_port))
    if settings.pushgateway_url:
        env.append(_env("SPARSIFY_PUSHGATEWAY_URL", settings.pushgateway_url))
    endpoint = spec.storage.endpoint or settings.s3_endpoint
    if endpoint:
        env.append(_env("AWS_ENDPOINT_URL", endpoint))
        env.append(_env("S3_USE_HTTPS", "1" if endpoint.startswith("https://") else "0"))
    region = spec.storage.region or settings.s3_region
    if region:
        env.append(_env("AWS_REGION", region))
    verify = spec.storage.verify_ssl if spec.storage.verify_ssl is not None else settings.s3_verify_ssl
    env.append(_env("S3_VERIFY_SSL", "1" if verify else "0"))
    secret = secret_name(spec, settings)
    if secret:
        for key, optional in SECRET_KEYS:
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _add_model_cache(
    container: dict[str, Any], pod_spec: dict[str, Any], spec: SparsifyExperimentSpec, exp: Experiment
) -> None:
    """The model cache volume (the runner's s3:// download cache and the Hugging Face cache) and
    ``HF_TOKEN`` from the Secret named in ``spec.hfTokenSecretRef``. A named PersistentVolumeClaim
    (``spec.modelCache.claimName``) outlives the pod; text-generation without one gets an emptyDir
    (sized like scratch), so a multi-GB model folder lives on its own volume either way."""
    env = container["env"]
    if spec.hf_token_secret_ref is not None:
        ref = spec.hf_token_secret_ref
        env.append({"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if spec.model_cache is None and exp.use_case != TEXT_GENERATION:
        return
    if spec.model_cache is not None:
        source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": spec.model_cache.claim_name}}
    else:
        limit = spec.resources.limits.ephemeral_storage
        source = {"emptyDir": {"sizeLimit": limit} if limit else {}}
    pod_spec["volumes"].append({"name": MODEL_CACHE_VOLUME, **source})
    container["volumeMounts"].append({"name": MODEL_CACHE_VOLUME, "mountPath": MODEL_CACHE})
    for item in env:
        if item["name"] == "SPARSIFY_CACHE_DIR":
            item["value"] = f"{MODEL_CACHE}/sparsify"
    env.append(_env("HF_HOME", f"{MODEL_CACHE}/huggingface"))


def secret_name(spec: SparsifyExperimentSpec, settings: OperatorSettings) -> str | None:
    return spec.storage.secret_ref.name if spec.storage.secret_ref else settings.secret_name


def _tolerations(spec: SparsifyExperimentSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.gpus and settings.gpu_tolerations:
        gpu = {"key": settings.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
        if gpu not in tolerations:
            tolerations.append(gpu)
    return tolerations


def runner_experiment(meta: dict[str, Any], exp: Experiment) -> dict[str, Any]:
    """The experiment JSON handed to the runner (named after the CR unless named)."""
    wire = exp.to_wire()
    wire.setdefault("name", meta.get("name"))
    return wire


def pod_labels(meta: dict[str, Any]) -> dict[str, str]:
    """Labels of the runner pods (and, plus the Kueue queue label, of the Job or JobSet)."""
    labels = {
        "app.kubernetes.io/name": "sparsify-runner",
        "app.kubernetes.io/component": "experiment",
        LABEL_MANAGED: MANAGED_BY,
        LABEL_EXPERIMENT: label_value(meta["name"]),
    }
    if meta.get("uid"):
        labels[LABEL_UID] = meta["uid"]
    return labels


def processes_per_node(valid: ValidSpec) -> int:
    """Runner processes per pod: one per GPU for the training pathways (DistributedDataParallel
    under torchrun), one for one-shot, which runs in a single process whatever ``spec.gpus`` says."""
    if valid.experiment.type not in DISTRIBUTED_TYPES:
        return 1
    return max(valid.spec.gpus, 1)


def runner_command(meta: dict[str, Any], valid: ValidSpec) -> tuple[list[str] | None, list[str]]:
    """(command, args) of the runner container; command None = the image's ENTRYPOINT
    (``sparsify-runner``). More than one process: ``torchrun ... -m sparsify_runner.cli run ...``,
    standalone on one node; across nodes torchrun takes its rendezvous from the ``PET_*``
    environment variables (``jobset.py``)."""
    run = [
        "run",
        "--quiet",
        "--experiment",
        json.dumps(runner_experiment(meta, valid.experiment), sort_keys=True),
    ]
    if valid.spec.nodes > 1:
        return [TORCHRUN], ["-m", RUNNER_MODULE, *run]
    nproc = processes_per_node(valid)
    if nproc > 1:
        return [TORCHRUN], ["--standalone", "--nproc-per-node", str(nproc), "-m", RUNNER_MODULE, *run]
    return None, run


def pod_template(
    experiment: dict[str, Any],
    settings: OperatorSettings,
    valid: ValidSpec,
    *,
    extra_env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The runner pod template shared by the Job and the JobSet (``extra_env``: the latter's
    torchrun rendezvous variables)."""
    spec, exp = valid.spec, valid.experiment
    meta = experiment.get("metadata") or {}
    command, args = runner_command(meta, valid)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.runner_image,
        "imagePullPolicy": spec.image_pull_policy or settings.image_pull_policy,
        **({"command": command} if command else {}),
        "args": args,
        "env": [*_container_env(meta, spec, settings), *(extra_env or [])],
        "resources": _resources(spec, settings),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "scratch", "mountPath": SCRATCH},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    pod_annotations: dict[str, str] = {}
    if settings.runner_metrics_port:
        container["ports"] = [{"name": "metrics", "containerPort": settings.runner_metrics_port}]
        pod_annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.runner_metrics_port),
        }
    scratch: dict[str, Any] = {}
    if spec.resources.limits.ephemeral_storage:
        scratch["sizeLimit"] = spec.resources.limits.ephemeral_storage
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # SIGTERM -> the runner checkpoints, then exits 143; give it time to upload.
        "terminationGracePeriodSeconds": 120,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "scratch", "emptyDir": scratch},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        ],
    }
    _add_model_cache(container, pod_spec, spec, exp)
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = _tolerations(spec, settings)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {
        "metadata": {
            "labels": pod_labels(meta),
            **({"annotations": pod_annotations} if pod_annotations else {}),
        },
        "spec": pod_spec,
    }


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # Preemption, eviction, node drain: not the run's fault, do not count it.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # Bad input: no retry can help.
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_BAD_INPUT]},
            },
        ]
    }


def ttl_seconds(valid: ValidSpec, settings: OperatorSettings) -> int | None:
    ttl = valid.spec.run_policy.ttl_seconds_after_finished
    return settings.ttl_seconds_after_finished if ttl is None else ttl


def child_metadata(experiment: dict[str, Any], name: str, spec: SparsifyExperimentSpec) -> dict[str, Any]:
    """Metadata of the experiment's Job or JobSet: labels (+ Kueue's queue), owner reference."""
    meta = experiment.get("metadata") or {}
    labels = pod_labels(meta)
    if spec.queue_name:
        labels[KUEUE_QUEUE_LABEL] = spec.queue_name
    out: dict[str, Any] = {
        "name": name,
        "labels": labels,
        "annotations": {"sparsify.dev/experiment-name": meta["name"]},
    }
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    if meta.get("uid"):
        out["ownerReferences"] = [
            {
                "apiVersion": experiment.get("apiVersion", API_VERSION),
                "kind": experiment.get("kind", KIND),
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return out


def build_job(
    experiment: dict[str, Any], settings: OperatorSettings, *, valid: ValidSpec | None = None
) -> dict[str, Any]:
    """The batch/v1 Job for a SparsifyExperiment object (a dict as read from the API) with
    ``spec.nodes`` 1 (more nodes: ``jobset.build_jobset``).

    Raises SpecError (with the offending field) for a spec the operator cannot run; a caller
    that already ran ``validate_spec`` passes its result as ``valid``.
    """
    valid = valid or validate_spec(experiment)
    spec = valid.spec
    meta = experiment.get("metadata") or {}
    run = spec.run_policy
    job_spec: dict[str, Any] = {
        "backoffLimit": run.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        # Kueue admits a queued Job by unsuspending it; otherwise the user's spec.suspend.
        "suspend": bool(spec.suspend or spec.queue_name),
        "podFailurePolicy": pod_failure_policy(),
        "template": pod_template(experiment, settings, valid),
    }
    if run.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = run.active_deadline_seconds
    ttl = ttl_seconds(valid, settings)
    if ttl is not None:
        job_spec["ttlSecondsAfterFinished"] = ttl
    job_meta = child_metadata(experiment, job_name(meta["name"]), spec)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta, "spec": job_spec}
