"""The ``SparsifyExperiment`` custom resource: pydantic models of its spec and status.

The runner's ``Experiment`` is embedded unchanged as ``spec.experiment`` (so a manifest's
``spec.experiment`` is exactly a runner experiment file); everything Kubernetes-specific
(placement, image, storage credentials, run policy, suspend) sits beside it. The CRD's
OpenAPI schema is generated from these models (``crd.py``), so the API server and
``sparsifyctl`` validate with the same rules.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sparsify_runner.contract import RunResults
from sparsify_runner.spec import Experiment

GROUP = "sparsify.dev"
VERSION = "v1alpha1"
KIND = "SparsifyExperiment"
PLURAL = "sparsifyexperiments"
SINGULAR = "sparsifyexperiment"
SHORT_NAMES = ["sx", "sparsify"]
API_VERSION = f"{GROUP}/{VERSION}"


class Phase(StrEnum):
    """``status.phase`` of an experiment (and of a sweep's point). A ``StrEnum``: its members
    are the wire strings, so they compare, hash and serialize (JSON) as those strings."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


PHASES = tuple(Phase)
TERMINAL_PHASES = (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(StrEnum):
    """``status.conditions[].type`` the operator sets (a terminal phase is also a condition)."""

    JOB_CREATED = "JobCreated"
    INVALID_SPEC = "InvalidSpec"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    COMPLETE = "Complete"  # sweeps: every point finished


class Reason(StrEnum):
    """``status.reason`` / condition reasons / Event reasons the operator writes itself. A
    status reason may also come from elsewhere (the runner's summary, the Job's Failed
    condition, a waiting container), so the field stays a plain string."""

    INVALID_SPEC = "InvalidSpec"
    JOB_CREATE_FAILED = "JobCreateFailed"
    JOB_CREATED = "JobCreated"
    JOB_DELETED = "JobDeleted"
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNSCHEDULABLE = "Unschedulable"
    JOBSET_NOT_INSTALLED = "JobSetNotInstalled"  # spec.nodes > 1 without the JobSet CRD


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


# Kubernetes quantities: "500m", "2", "8Gi", ...
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class ResourceList(_Model):
    cpu: str | None = Field(None, pattern=QUANTITY_PATTERN, max_length=32, description="CPU, e.g. 4 or 500m.")
    memory: str | None = Field(
        None, pattern=QUANTITY_PATTERN, max_length=32, description="Memory, e.g. 16Gi."
    )
    ephemeral_storage: str | None = Field(
        None, pattern=QUANTITY_PATTERN, max_length=32, description="Scratch space for downloads, e.g. 50Gi."
    )


class Resources(_Model):
    """CPU/memory for the runner container (GPUs come from ``spec.gpus``)."""

    requests: ResourceList = Field(default_factory=ResourceList)
    limits: ResourceList = Field(default_factory=ResourceList)


class Toleration(_Model):
    key: str | None = Field(None, max_length=253)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class SecretRef(_Model):
    """A Secret in the experiment's namespace holding S3 credentials under the keys
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optionally ``AWS_SESSION_TOKEN``."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class Storage(_Model):
    """Where s3:// URIs live. Unset fields fall back to the operator's defaults (Helm values)."""

    endpoint: str | None = Field(
        None,
        max_length=512,
        pattern=r"^https?://",
        description="S3-compatible endpoint URL (MinIO, Ceph RGW, GCS interop); empty = AWS S3.",
    )
    region: str | None = Field(None, max_length=64)
    verify_ssl: bool | None = Field(None, description="Verify the endpoint's TLS certificate.")
    secret_ref: SecretRef | None = Field(None, description="Credentials; never put credentials in the spec.")


class HfTokenSecretRef(_Model):
    """A Secret in the experiment's namespace holding a Hugging Face access token (gated or private
    models); the Job reads it as ``HF_TOKEN`` through ``secretKeyRef``, never as a value."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field(
        "HF_TOKEN",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The Secret's key holding the token.",
    )


class ModelCache(_Model):
    """Where the runner keeps downloaded models (its s3:// cache and the Hugging Face cache)."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="A PersistentVolumeClaim in the experiment's namespace: retried pods and later "
        "experiments reuse what an earlier run downloaded. Without modelCache a text-generation Job "
        "gets an emptyDir cache volume.",
    )


class RunPolicy(_Model):
    backoff_limit: int = Field(
        2, ge=0, le=20, description="Retries for transient failures (exit 75, crashes)."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=60, description="Wall-clock limit for the whole run."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the finished Job (not the experiment) after this many seconds."
    )


class SparsifyExperimentSpec(_Model):
    experiment: Experiment = Field(description="The runner experiment (sparsify-runner run --experiment).")
    image: str | None = Field(None, max_length=512, description="Runner image; default from the operator.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    gpus: int = Field(
        1,
        ge=0,
        le=16,
        description="GPUs (nvidia.com/gpu) per pod; 0 = CPU only. With more than one, training-aware "
        "and sparse-transfer run one process per GPU (torchrun --nproc-per-node, DistributedDataParallel); "
        "one-shot runs one process and uses one GPU.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Pods (nodes) for training-aware / sparse-transfer: more than one runs a JobSet of "
        "indexed pods joined by torchrun (needs the JobSet CRD, jobset.x-k8s.io); each pod gets spec.gpus.",
    )
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=32)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    priority_class_name: str | None = Field(None, max_length=253)
    queue_name: str | None = Field(
        None, max_length=63, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name on the Job)."
    )
    storage: Storage = Field(default_factory=Storage)
    hf_token_secret_ref: HfTokenSecretRef | None = Field(
        None, description="Hugging Face token from a Secret (HF_TOKEN); never put the token in the spec."
    )
    model_cache: ModelCache | None = Field(
        None, description="A PersistentVolumeClaim for the model cache (text-generation default: emptyDir)."
    )
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    suspend: bool = Field(False, description="Suspend the Job (the only field that may change once it runs).")


# ---- status ---------------------------------------------------------------------------------


class Condition(_Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024)
    message: str = Field("", max_length=32768)
    last_transition_time: str
    observed_generation: int | None = None


class Results(RunResults):
    """Headline numbers from the runner's termination message (full details in the report)."""

    # the runner's RunResults contract, as strict as every other part of the CR
    model_config = _Model.model_config


class SparsifyExperimentStatus(_Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] | None = None
    reason: str | None = Field(None, description="Machine-readable reason of the current phase.")
    message: str | None = Field(None, description="Human-readable detail (last lines of an error).")
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    job_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    attempts: int | None = Field(None, description="Pods started for this experiment (retries included).")
    results: Results | None = None


class SparsifyExperiment(_Model):
    api_version: Literal["sparsify.dev/v1alpha1"] = API_VERSION
    kind: Literal["SparsifyExperiment"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SparsifyExperimentSpec
    status: SparsifyExperimentStatus | None = None
