"""KServe hand-off: the ``InferenceService`` (and the ServiceAccount carrying the S3 Secret) that
serves a finished run's Triton model repository (``sparsifyctl generate serve``).

Every published run holds ``<output>/model_repository/<name>/{config.pbtxt,1/model.onnx}``
(``sparsify_runner.model_repository``); KServe's storage initializer copies the storageUri
prefix to ``/mnt/models`` and Triton (the runtime KServe picks for ``modelFormat: onnx`` over
the v2 protocol) serves every model folder in it at ``/v2/models/<name>/infer``.

S3 credentials: KServe reads the ServiceAccount of the predictor; each Secret listed in its
``secrets`` becomes ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` of the storage
initializer (the same keys the runner's Secret holds), and ``serving.kserve.io/s3-*``
annotations (on the Secret or the ServiceAccount) give the endpoint, https and region.
So the ServiceAccount made here only *names* the Secret; no credential value is ever written.

A text-generation run publishes ``<output>/model/`` instead (a compressed-tensors Hugging Face
folder): its InferenceService uses KServe's Hugging Face serving runtime
(``modelFormat: huggingface``, ``kserve-huggingfaceserver``) with the vLLM backend on a GPU
(``--backend=vllm``; without a GPU the transformers backend, which loads compressed-tensors
too), serving the OpenAI-compatible completions API. The run is recognised by its marker
(``model/config.json`` among the published files), a ``--from`` ending in ``/model``, the
experiment's use case, or ``--runtime kserve-huggingfaceserver``.

The manifest builders are pure (dicts in, dicts out); resolving ``--from`` gets the cluster
object or the storage read passed in, and ``read_run_marker`` (the one storage read here,
best effort, lazy imports) is what the CLI passes for s3 runs.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sparsify_runner.spec import TEXT_GENERATION, normalize_use_case  # pure pydantic, no torch

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
MODEL_FORMAT = "onnx"
PROTOCOL = "v2"
REPOSITORY_DIR = "model_repository"  # = sparsify_runner.model_repository.REPOSITORY_DIR (torch-free here)
TRITON_RUNTIME = "kserve-tritonserver"
LLM_FOLDER = "model"  # = sparsify_runner.run.MODEL_FOLDER: text-generation's compressed-tensors folder
HF_MODEL_FORMAT = "huggingface"
HF_RUNTIME = "kserve-huggingfaceserver"
# KServe's built-in ServingRuntimes that cannot serve ONNX over the v2 protocol
NON_ONNX_RUNTIMES = {
    "kserve-sklearnserver",
    "kserve-xgbserver",
    "kserve-lgbserver",
    "kserve-paddleserver",
    "kserve-pmmlserver",
    "kserve-torchserve",
    "kserve-tensorflow-serving",
    "kserve-huggingfaceserver",
    "kserve-mlserver",
}
# KServe's built-in ServingRuntimes that cannot serve a Hugging Face folder
NON_HF_RUNTIMES = (NON_ONNX_RUNTIMES - {HF_RUNTIME}) | {TRITON_RUNTIME}
S3_ANNOTATION = "serving.kserve.io/s3-"
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class ServeError(ValueError):
    """A bad ``generate serve`` value; the message is the one line the user sees."""


def check_name(flag: str, value: str, *, label: bool = True, limit: int = 63) -> str:
    """KServe wants DNS-1035 labels for InferenceService names (they become hostnames)."""
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    if len(value) > limit or not pattern.fullmatch(value):
        kind = "lower-case letters, digits and '-', starting with a letter" if label else "a DNS name"
        raise ServeError(f"{flag} '{value}' is not a valid Kubernetes name ({kind}, at most {limit} chars)")
    return value


def default_name(text: str | None) -> str:
    """A DNS-1035 label from an experiment name or a run prefix's last segment."""
    name = re.sub(r"[^a-z0-9-]+", "-", (text or "").lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:63].rstrip("-")
    return name or "sparsified-model"


def check_runtime(runtime: str | None, *, llm: bool = False) -> str | None:
    """None lets KServe pick (Triton for onnx/v2, its Hugging Face server for huggingface); a
    named runtime must be able to serve the run's model."""
    if runtime is None:
        return None
    check_name("--runtime", runtime, label=False)
    if llm and runtime in NON_HF_RUNTIMES:
        raise ServeError(
            f"--runtime '{runtime}' cannot serve a Hugging Face model folder (this run is text-generation); "
            f"use {HF_RUNTIME} or omit --runtime to let KServe choose"
        )
    if not llm and runtime in NON_ONNX_RUNTIMES:
        raise ServeError(
            f"--runtime '{runtime}' cannot serve ONNX models over the v2 protocol; "
            f"use {TRITON_RUNTIME} or omit --runtime to let KServe choose"
        )
    return runtime


def repository_uri(uri: str) -> str:
    """A run prefix (``s3://bucket/run``) or its repository -> the repository's storageUri."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ServeError(
            f"--from '{uri}' must be NAMESPACE/EXPERIMENT or an s3://bucket/run prefix "
            "(KServe downloads the model from object storage)"
        )
    path = parsed.path.strip("/")
    if path.endswith(f"/{REPOSITORY_DIR}") or path == REPOSITORY_DIR:
        return f"s3://{parsed.netloc}/{path}"
    return f"s3://{parsed.netloc}/{path + '/' if path else ''}{REPOSITORY_DIR}"


def llm_folder_uri(uri: str) -> str:
    """A text-generation run prefix (``s3://bucket/run``) or its ``model`` folder -> the folder's
    storageUri."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ServeError(
            f"--from '{uri}' must be NAMESPACE/EXPERIMENT or an s3://bucket/run prefix "
            "(KServe downloads the model from object storage)"
        )
    path = parsed.path.strip("/")
    if path.endswith(f"/{LLM_FOLDER}") or path == LLM_FOLDER:
        return f"s3://{parsed.netloc}/{path}"
    return f"s3://{parsed.netloc}/{path + '/' if path else ''}{LLM_FOLDER}"


def run_prefix(storage_uri: str) -> str:
    """The run prefix a repository (or text-generation model folder) URI belongs to (where
    ``_SUCCESS.json`` lives)."""
    trimmed = storage_uri.rstrip("/")
    for leaf in (REPOSITORY_DIR, LLM_FOLDER):
        if trimmed.endswith(f"/{leaf}") or trimmed.endswith(f"://{leaf}"):
            return trimmed.removesuffix(leaf).rstrip("/")
    return trimmed


def s3_annotations(endpoint: str | None, region: str | None) -> dict[str, str]:
    """KServe's S3 settings from the endpoint URL the operator's experiments use."""
    notes: dict[str, str] = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parsed.netloc:
            raise ServeError(f"--endpoint '{endpoint}' is not a URL like http://minio.storage:9000")
        notes[f"{S3_ANNOTATION}endpoint"] = parsed.netloc
        notes[f"{S3_ANNOTATION}usehttps"] = "0" if parsed.scheme == "http" else "1"
    if region:
        notes[f"{S3_ANNOTATION}region"] = region
    return notes


def secret_annotation_hint(secret: str, namespace: str | None, annotations: dict[str, str]) -> str | None:
    """The ``kubectl annotate`` line that puts the same S3 settings on the Secret itself (where
    KServe looks first); names and settings only, never a credential."""
    if not annotations:
        return None
    ns = f" -n {namespace}" if namespace else ""
    pairs = " ".join(f"{k}={v}" for k, v in annotations.items())
    return f"note: KServe reads S3 settings from the Secret too: kubectl annotate secret {secret}{ns} {pairs}"


def service_account_manifest(
    name: str, namespace: str | None, secret: str, annotations: dict[str, str]
) -> dict[str, Any]:
    """A ServiceAccount that lists the S3 Secret (by name only) for KServe's storage initializer."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata, "secrets": [{"name": secret}]}


def resources(
    *, cpu: str | None, memory: str | None, memory_limit: str | None, gpus: int
) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if cpu:
        out.setdefault("requests", {})["cpu"] = cpu
    if memory:
        out.setdefault("requests", {})["memory"] = memory
    if memory_limit:
        out.setdefault("limits", {})["memory"] = memory_limit
    if gpus:
        out.setdefault("limits", {})["nvidia.com/gpu"] = str(gpus)
    return out


def inference_service_manifest(
    name: str,
    namespace: str | None,
    storage_uri: str,
    service_account: str | None = None,
    *,
    runtime: str | None = None,
    resources: dict[str, dict[str, str]] | None = None,
    node_selector: dict[str, str] | None = None,
    source: str | None = None,
    llm: bool = False,
) -> dict[str, Any]:
    """The ``serving.kserve.io/v1beta1`` InferenceService for a Triton model repository, or with
    ``llm`` for a text-generation run's Hugging Face folder (KServe's Hugging Face runtime)."""
    if llm:
        gpus = int(((resources or {}).get("limits") or {}).get("nvidia.com/gpu", "0"))
        model: dict[str, Any] = {
            "modelFormat": {"name": HF_MODEL_FORMAT},
            "storageUri": storage_uri,
            "args": [f"--model_name={name}", *llm_backend_args(gpus)],
        }
    else:
        model = {
            "modelFormat": {"name": MODEL_FORMAT},
            "protocolVersion": PROTOCOL,
            "storageUri": storage_uri,
        }
    if runtime:
        model["runtime"] = runtime
    if resources:
        model["resources"] = resources
    predictor: dict[str, Any] = {"model": model}
    if service_account:
        predictor["serviceAccountName"] = service_account
    if node_selector:
        predictor["nodeSelector"] = dict(node_selector)
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {"app.kubernetes.io/managed-by": "sparsifyctl"}
    if source:
        metadata["annotations"] = {"sparsify.dev/source": source}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": {"predictor": predictor}}


def llm_backend_args(gpus: int) -> list[str]:
    """KServe Hugging Face server arguments: vLLM on a GPU (it reads the compressed-tensors
    quantization config itself); without a GPU the transformers backend (vLLM's CUDA build does not
    run on a CPU), which loads the same folder through compressed-tensors."""
    if gpus:
        return ["--backend=vllm", "--dtype=auto"]
    return ["--backend=huggingface", "--dtype=float32"]


def serve_manifests(
    *,
    name: str,
    namespace: str | None,
    storage_uri: str,
    service_account: str | None,
    secret: str | None,
    endpoint: str | None,
    region: str | None,
    runtime: str | None,
    resources: dict[str, dict[str, str]],
    node_selector: dict[str, str],
    source: str | None,
    llm: bool = False,
) -> list[dict[str, Any]]:
    """[ServiceAccount (when a Secret is named), InferenceService], flag values validated."""
    check_name("--name", name)
    runtime = check_runtime(runtime, llm=llm)
    docs: list[dict[str, Any]] = []
    if secret:
        check_name("--secret", secret, label=False, limit=253)
        service_account = service_account or f"{name}-storage"
        check_name("--service-account", service_account, label=False, limit=253)
        docs.append(
            service_account_manifest(service_account, namespace, secret, s3_annotations(endpoint, region))
        )
    elif service_account:
        check_name("--service-account", service_account, label=False, limit=253)
    docs.append(
        inference_service_manifest(
            name,
            namespace,
            storage_uri,
            service_account,
            runtime=runtime,
            resources=resources,
            node_selector=node_selector,
            source=source,
            llm=llm,
        )
    )
    return docs


# ---- resolving --from ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """What a finished run tells the InferenceService (flags override the defaults)."""

    storage_uri: str
    name: str
    origin: str
    namespace: str | None = None
    secret: str | None = None
    endpoint: str | None = None
    region: str | None = None
    gpus: int = 0
    llm: bool = False
    """A text-generation run: ``storage_uri`` is its Hugging Face folder, served by KServe's
    Hugging Face runtime (vLLM) on a GPU by default."""


def parse_ref(source: str, namespace: str | None) -> tuple[str | None, str]:
    """``NAMESPACE/EXPERIMENT`` (or ``EXPERIMENT`` with ``-n``/the context's namespace)."""
    ns, _, name = source.rpartition("/")
    if "://" in source or source.count("/") > 1 or not name:
        raise ServeError(f"--from '{source}' must be NAMESPACE/EXPERIMENT or an s3://bucket/run prefix")
    if ns:
        check_name("--from namespace", ns)
    check_name("--from experiment", name, label=False, limit=253)
    return (ns or namespace), name


def from_experiment(obj: dict[str, Any]) -> Source:
    """A SparsifyExperiment as read from the cluster -> its published model repository."""
    meta = obj.get("metadata") or {}
    ref = f"{meta.get('namespace')}/{meta.get('name')}"
    status = obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase != "Succeeded":
        raise ServeError(
            f"experiment {ref} is {phase}, not Succeeded; wait for it (sparsifyctl watch {meta.get('name')})"
        )
    spec = obj.get("spec") or {}
    experiment = spec.get("experiment") or {}
    llm = normalize_use_case(str(experiment.get("useCase") or "")) == TEXT_GENERATION
    results = status.get("results") or {}
    # a text-generation run serves its model folder (modelUri) when its runner set no servingUri
    uri = results.get("servingUri") or (results.get("modelUri") if llm else None)
    if not uri:
        raise ServeError(
            f"experiment {ref} has no status.results.servingUri (its runner published no model "
            "repository); re-run it with this version, or pass --from s3://bucket/run"
        )
    if not uri.startswith("s3://"):
        raise ServeError(f"experiment {ref} published to '{uri}', which KServe cannot download; use s3://")
    storage = spec.get("storage") or {}
    device = (experiment.get("deploy") or {}).get("device")
    return Source(
        storage_uri=uri.rstrip("/"),
        name=default_name(meta.get("name")),
        origin=ref,
        namespace=meta.get("namespace"),
        secret=(storage.get("secretRef") or {}).get("name"),
        endpoint=storage.get("endpoint"),
        region=storage.get("region"),
        gpus=1 if device == "cuda" or llm else 0,
        llm=llm,
    )


def from_run(
    uri: str, read_marker: Callable[[str], dict[str, Any] | None] | None = None, *, llm_hint: bool = False
) -> Source:
    """An ``s3://`` run prefix (or its model repository, or a text-generation run's ``model``
    folder). ``read_marker`` returns the run's ``_SUCCESS.json`` (None: no finished run there) or
    raises when storage cannot be asked; then the manifest is generated from the URI alone,
    silently (generation works offline), and ``llm_hint`` (``--runtime kserve-huggingfaceserver``)
    or a URI ending in ``/model`` says the run is text-generation."""
    llm = llm_hint or uri.rstrip("/").endswith(f"/{LLM_FOLDER}")
    prefix = run_prefix(llm_folder_uri(uri) if llm else repository_uri(uri))
    marker: dict[str, Any] | None | bool = False  # False: unknown
    if read_marker is not None:
        try:
            marker = read_marker(prefix)
        except Exception:
            marker = False
    if marker is None:
        raise ServeError(f"no finished run at {prefix} (no _SUCCESS.json); check --from or wait for the run")
    if isinstance(marker, dict):
        llm = f"{LLM_FOLDER}/config.json" in (marker.get("files") or {})
    segment = prefix.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1]
    if llm:
        name = default_name(segment)
        return Source(storage_uri=f"{prefix}/{LLM_FOLDER}", name=name, origin=uri, gpus=1, llm=True)
    if isinstance(marker, dict) and not any(
        str(f).startswith(f"{REPOSITORY_DIR}/") for f in marker.get("files") or {}
    ):
        raise ServeError(
            f"the run at {prefix} was published without a {REPOSITORY_DIR}/ (an older runner); "
            "re-run the experiment to get one"
        )
    return Source(storage_uri=f"{prefix}/{REPOSITORY_DIR}", name=default_name(segment), origin=uri)


@contextlib.contextmanager
def _quick_storage() -> Iterator[None]:
    """One attempt with short timeouts: a best-effort check must not stall an offline laptop."""
    wanted = {
        "SPARSIFY_S3_MAX_ATTEMPTS": "1",
        "SPARSIFY_S3_CONNECT_TIMEOUT": "3",
        "SPARSIFY_S3_READ_TIMEOUT": "10",
    }
    saved = {k: os.environ.get(k) for k in wanted}
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_run_marker(prefix: str) -> dict[str, Any] | None:
    """The run's completion marker via the runner's storage module; raises when storage is
    not configured here (no endpoint or credentials in the environment) or unreachable."""
    configured = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT", "AWS_ACCESS_KEY_ID")
    if not any(os.environ.get(k) for k in (*configured, "AWS_PROFILE")):
        raise LookupError("no object storage configured in this environment")
    from sparsify_runner.storage import OutputLocation

    with _quick_storage():
        return OutputLocation(prefix).marker()
