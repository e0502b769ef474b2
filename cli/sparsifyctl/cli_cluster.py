"""Cluster commands: ``generate``, ``apply``, ``get``/``list``, ``watch``, ``logs``, ``delete``, ``crd``.

``generate`` takes exactly the experiment flags of ``sparsifyctl run`` (shared in
``experiment_options``) plus placement flags, and prints a manifest without touching a
cluster. The others talk to the current kube context; ``kubernetes`` is imported lazily.
Bad flags or manifests get one line (``error: ...``, exit 2) before anything is sent.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from typing import Any

import typer
import yaml
from sparsify_operator import crd as crd_mod
from sparsify_operator import jobs
from sparsify_operator.models import API_VERSION, KIND, TERMINAL_PHASES
from sparsify_runner.errors import InputError
from sparsify_runner.spec import TEXT_GENERATION, Experiment, ExperimentType, uri_scheme

from .cli import app
from .experiment_options import build_experiment, with_experiment_options

_NS = typer.Option(None, "--namespace", "-n", help="Namespace (default: the kube context's).")
_CTX = typer.Option(None, "--context", help="Kube context (default: current).")

# CR spec path -> the flag that sets it (for one-line errors that say what to change)
_FLAG_FOR = {
    "spec.experiment.model": "--model",
    "spec.experiment.data": "--data",
    "spec.experiment.teacher": "--teacher",
    "spec.experiment.recipe": "--recipe",
    "spec.experiment.catalog": "--catalog",
    "spec.experiment.output": "--output",
    "spec.storage.endpoint": "--endpoint",
    "spec.storage.secretRef.name": "--secret",
    "spec.gpus": "--gpus",
    "spec.nodes": "--nodes",
    "spec.queueName": "--queue",
    "spec.image": "--image",
    "spec.resources.requests.cpu": "--cpu",
    "spec.resources.requests.memory": "--memory",
    "spec.hfTokenSecretRef.name": "--hf-token-secret",
    "spec.hfTokenSecretRef.key": "--hf-token-secret",
    "spec.modelCache.claimName": "--model-cache-pvc",
}


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _dns_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-") or "experiment"


def _read_quantity(flag: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?", value):
        _fail(f"{flag} '{value}' is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value


def default_gpus(exp: Experiment) -> int:
    """``--gpus`` when not given: 0 for a one-shot with a CPU deploy target (calibration,
    pruning and INT8 run on onnxruntime/numpy on the CPU the model is benchmarked on), else 1
    (training pathways; a cuda deploy target is benchmarked on its GPU; text-generation, whose
    llm-compressor calibration runs layer by layer on the GPU whatever the deploy target)."""
    if exp.use_case == TEXT_GENERATION:
        return 1
    return 0 if exp.type == ExperimentType.one_shot and exp.deploy.device == "cpu" else 1


_STORE = "s3://BUCKET/PATH (or an https:// URL)"


def check_cluster_uris(exp: Experiment, flags: dict[str, Any]) -> None:
    """InputError naming the flag when an input or the output is not something a cluster Job
    can reach: local paths, and names (``resnet50``, ``imagenette``), which only ``sparsifyctl
    run`` resolves (the operator accepts s3:// and https:// inputs, an s3:// output)."""
    from sparsify_runner.named import is_name

    if uri_scheme(exp.output) != "s3":
        if flags.get("working_dir") is not None:
            raise InputError(
                f"--working-dir '{flags['working_dir']}' must be an s3:// prefix in a cluster (a Job cannot "
                "write to this machine's folders); pass --working-dir s3://BUCKET/RUNS"
            )
        if flags.get("output") is None:
            raise InputError(
                "--output is missing: in a cluster it must be an s3:// prefix the Job writes model.onnx "
                "and report.json to (e.g. --output s3://BUCKET/runs/exp1)"
            )
        raise InputError(
            f"--output '{exp.output}' must be an s3:// prefix in a cluster (a Job cannot write to this "
            "machine's folders); pass --output s3://BUCKET/PREFIX"
        )
    for field, flag, what in (
        ("model", "--model", "model"),
        ("data", "--data", "dataset"),
        ("teacher", "--teacher", "model"),
        ("recipe", "--recipe", None),
        ("catalog", "--catalog", None),
    ):
        value = getattr(exp, field)
        if value is None or uri_scheme(value) in jobs.CLUSTER_SCHEMES:
            continue
        if what is not None and is_name(value):
            raise InputError(
                f"{flag} '{value}' is a {what} name; names (resnet50, bert-base-uncased, imagenette) are not "
                f"supported on a cluster yet, only by `sparsifyctl run` on this machine: put the {what} in "
                f"object storage and pass {flag} {_STORE}"
            )
        raise InputError(
            f"{flag} '{value}' is a local path, which a cluster Job cannot read; upload it to object "
            f"storage and pass {flag} {_STORE}"
        )


def build_manifest(experiment_type: str, flags: dict[str, Any], **opts: Any) -> dict[str, Any]:
    """Flags -> a validated SparsifyExperiment manifest (raises InputError with one line).
    ``gpus`` None (or absent): :func:`default_gpus`."""
    exp = build_experiment(experiment_type, **flags)
    check_cluster_uris(exp, flags)
    wire = exp.to_wire()
    name = opts.get("name") or exp.name
    if name:
        meta_name = _dns_name(name)
    else:
        digest = hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()[:6]
        meta_name = _dns_name(f"{exp.type.value}-{exp.use_case}")[:56] + f"-{digest}"
    gpus = opts.get("gpus")
    spec: dict[str, Any] = {"experiment": wire, "gpus": default_gpus(exp) if gpus is None else gpus}
    if opts.get("nodes") is not None:
        spec["nodes"] = opts["nodes"]
    for key, opt in (("image", "image"), ("queueName", "queue"), ("priorityClassName", "priority_class")):
        if opts.get(opt):
            spec[key] = opts[opt]
    resources: dict[str, dict[str, str]] = {}
    for part, res, opt in (
        ("requests", "cpu", "cpu"),
        ("requests", "memory", "memory"),
        ("limits", "memory", "memory_limit"),
    ):
        if opts.get(opt):
            resources.setdefault(part, {})[res] = opts[opt]
    if resources:
        spec["resources"] = resources
    if opts.get("node_selector"):
        spec["nodeSelector"] = opts["node_selector"]
    storage: dict[str, Any] = {}
    if opts.get("endpoint"):
        storage["endpoint"] = opts["endpoint"]
    if opts.get("region"):
        storage["region"] = opts["region"]
    if opts.get("secret"):
        storage["secretRef"] = {"name": opts["secret"]}
    if storage:
        spec["storage"] = storage
    if opts.get("hf_token_secret"):
        name, _, key = opts["hf_token_secret"].partition(":")
        spec["hfTokenSecretRef"] = {"name": name, **({"key": key} if key else {})}
    if opts.get("model_cache_pvc"):
        spec["modelCache"] = {"claimName": opts["model_cache_pvc"]}
    run_policy = {
        k: v
        for k, v in (
            ("backoffLimit", opts.get("backoff_limit")),
            ("activeDeadlineSeconds", opts.get("deadline")),
        )
        if v is not None
    }
    if run_policy:
        spec["runPolicy"] = run_policy
    if opts.get("suspend"):
        spec["suspend"] = True
    metadata: dict[str, Any] = {"name": meta_name}
    if opts.get("namespace"):
        metadata["namespace"] = opts["namespace"]
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    try:
        jobs.validate_spec(manifest)
    except jobs.SpecError as err:
        flag = _FLAG_FOR.get(err.field)
        hint = f" (set with {flag})" if flag else ""
        raise InputError(f"{err}{hint}") from None
    return manifest


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=False)


_GENERATE_HELP = {
    "model": "Model URI the Job downloads: s3://... or https://... (ONNX for one-shot); local paths and "
    "names such as resnet50 work only with `sparsifyctl run`.",
    "data": "Dataset URI: an s3:// prefix or https:// archive; local folders and names such as imagenette "
    "work only with `sparsifyctl run`.",
    "teacher": "Distillation teacher URI, s3:// or https:// (default: the dense model).",
    "recipe": "Recipe YAML URI, s3:// or https://, overriding the optim-level recipe.",
    "catalog": "Sparse-transfer base-model catalog URI, s3:// or https://.",
    "output": "Required (or --working-dir): the s3:// prefix the Job writes model.onnx and report.json to.",
    "working_dir": "An s3:// prefix; the Job writes to PREFIX/<name> (the original's working dir); "
    "not with --output.",
}


@app.command("generate")
@with_experiment_options(help_for=_GENERATE_HELP)
def generate_command(
    experiment_type: str = typer.Argument(
        ..., help="one-shot, sparse-transfer or training-aware; serve: a KServe InferenceService"
    ),
    gpus: int | None = typer.Option(
        None,
        "--gpus",
        help="GPUs (nvidia.com/gpu); 0 = CPU. Default: 0 for one-shot with a cpu deploy target, 1 for "
        "the training types or a cuda target (serve: 1 for a cuda deploy target).",
    ),
    nodes: int | None = typer.Option(
        None,
        "--nodes",
        help="Pods for one training run (default 1); more than one runs a JobSet of pods joined by "
        "torchrun, each with --gpus GPUs (needs JobSet in the cluster).",
    ),
    queue: str | None = typer.Option(None, "--queue", help="Kueue LocalQueue name."),
    image: str | None = typer.Option(None, "--image", help="Runner image (default: the operator's)."),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help="Namespace of the experiment."),
    secret: str | None = typer.Option(None, "--secret", help="Secret with AWS_ACCESS_KEY_ID/..._SECRET..."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="S3 endpoint URL (MinIO, Ceph, GCS)."),
    region: str | None = typer.Option(None, "--region", help="S3 region."),
    cpu: str | None = typer.Option(None, "--cpu", help="CPU request, e.g. 4."),
    memory: str | None = typer.Option(None, "--memory", help="Memory request, e.g. 16Gi."),
    memory_limit: str | None = typer.Option(None, "--memory-limit", help="Memory limit."),
    priority_class: str | None = typer.Option(None, "--priority-class", help="PriorityClass name."),
    node_selector: list[str] = typer.Option(None, "--node-selector", help="key=value (repeatable)."),
    backoff_limit: int | None = typer.Option(None, "--backoff-limit", help="Retries for transient failures."),
    deadline: int | None = typer.Option(None, "--deadline", help="activeDeadlineSeconds for the Job."),
    suspend: bool = typer.Option(False, "--suspend", help="Create the experiment suspended."),
    hf_token_secret: str | None = typer.Option(
        None,
        "--hf-token-secret",
        help="SECRET[:KEY]: the Job reads HF_TOKEN from this Secret's key (default key HF_TOKEN); "
        "the token itself never enters the manifest.",
    ),
    model_cache_pvc: str | None = typer.Option(
        None,
        "--model-cache-pvc",
        help="PersistentVolumeClaim for the downloaded-model cache (text-generation default: emptyDir).",
    ),
    fmt: str = typer.Option("yaml", "--format", help="yaml or json."),
    sweep: bool = typer.Option(False, "--sweep", help="A SparsifySweep: one child per --optim-levels point."),
    optim_levels: str | None = typer.Option(None, "--optim-levels", help="--sweep: levels, e.g. 0.2,0.8."),
    structures: str | None = typer.Option(None, "--structures", help="--sweep: unstructured,channels."),
    parallelism: int = typer.Option(2, "--parallelism", "--parallel", help="--sweep: children at once."),
    min_fidelity: float | None = typer.Option(None, "--min-fidelity", help="--sweep: fidelity floor."),
    source: str | None = typer.Option(None, "--from", help="serve: NAMESPACE/EXPERIMENT or s3://bucket/run."),
    service_account: str | None = typer.Option(
        None, "--service-account", help="serve: the ServiceAccount that carries the S3 Secret."
    ),
    runtime: str | None = typer.Option(
        None, "--runtime", help="serve: ServingRuntime (default: KServe picks; e.g. kserve-tritonserver)."
    ),
    context: str | None = typer.Option(None, "--context", help="serve --from NS/NAME: kube context."),
    flags: dict[str, Any] | None = None,
) -> None:
    """Print a SparsifyExperiment manifest, or with `serve` a KServe InferenceService for a finished
    run (pipe it to `kubectl apply -f -`)."""
    if fmt not in ("yaml", "json"):
        _fail(f"--format must be yaml or json, got '{fmt}'")
    if gpus is not None and (gpus < 0 or gpus > 16):
        _fail(f"--gpus must be between 0 and 16, got {gpus}")
    if nodes is not None and (nodes < 1 or nodes > 64):
        _fail(f"--nodes must be between 1 and 64, got {nodes}")
    selector: dict[str, str] = {}
    for item in node_selector or []:
        if "=" not in item:
            _fail(f"--node-selector '{item}' must look like key=value")
        key, value = item.split("=", 1)
        selector[key] = value
    serve_opts = {"--from": source, "--service-account": service_account, "--runtime": runtime}
    serve_opts["--context"] = context
    if experiment_type == "serve":
        job_flags = {"--nodes": nodes, "--queue": queue, "--image": image, "--priority-class": priority_class,
                     "--backoff-limit": backoff_limit, "--deadline": deadline, "--suspend": suspend or None,
                     "--hf-token-secret": hf_token_secret, "--model-cache-pvc": model_cache_pvc}
        flags = {**(flags or {}), **{f: v for f, v in job_flags.items() if v is not None}}
        resources = {"cpu": cpu, "memory": memory, "memory_limit": memory_limit}
        _generate_serve(flags, serve_opts, gpus, namespace, secret, endpoint, region, resources,
                        selector, fmt)
        return
    for flag, value in serve_opts.items():
        if value is not None:
            _fail(f"{flag} applies only to `generate serve`")
    sweep_fields = None
    if sweep:
        from .cli_sweep import sweep_request

        try:
            flags, sweep_fields = sweep_request(
                flags or {}, optim_levels, structures, parallelism, min_fidelity
            )
        except InputError as err:
            _fail(str(err))
    elif optim_levels is not None or structures is not None:
        _fail("--optim-levels/--structures apply only with --sweep (generate --sweep --optim-levels ...)")
    try:
        manifest = build_manifest(
            experiment_type,
            flags or {},
            gpus=gpus,
            nodes=nodes,
            queue=queue,
            image=image,
            namespace=namespace,
            secret=secret,
            endpoint=endpoint,
            region=region,
            cpu=_read_quantity("--cpu", cpu),
            memory=_read_quantity("--memory", memory),
            memory_limit=_read_quantity("--memory-limit", memory_limit),
            priority_class=priority_class,
            node_selector=selector,
            backoff_limit=backoff_limit,
            deadline=deadline,
            suspend=suspend,
            hf_token_secret=hf_token_secret,
            model_cache_pvc=model_cache_pvc,
        )
    except InputError as err:
        _fail(str(err))
    if sweep_fields is not None:
        from .cli_sweep import sweep_manifest

        manifest = sweep_manifest(manifest, sweep_fields)
    typer.echo(_dump(manifest, fmt).rstrip("\n"))


def _generate_serve(flags, serve_opts, gpus, namespace, secret, endpoint, region, resources, selector, fmt):
    """`generate serve`: the finished run (cluster experiment or s3 prefix) -> InferenceService."""
    from sparsify_operator import inference_service as isvc

    from .experiment_options import EXPERIMENT_PARAMS

    stray = [f for f in flags if f.startswith("--")] + [
        option.param_decls[0]
        for key, (_, option) in EXPERIMENT_PARAMS.items()
        if key != "name" and flags.get(key, option.default) != option.default
    ]
    if stray:
        _fail(f"{stray[0]} does not apply to `generate serve` (it serves a finished run)")
    source = serve_opts["--from"]
    if not source:
        _fail("generate serve needs --from NAMESPACE/EXPERIMENT or --from s3://bucket/run")
    try:
        if source.startswith("s3://"):
            llm_hint = serve_opts["--runtime"] == isvc.HF_RUNTIME
            found = isvc.from_run(source, isvc.read_run_marker, llm_hint=llm_hint)
        else:
            ns, name = isvc.parse_ref(source, namespace)
            ns = ns or _namespace(None, serve_opts["--context"])
            found = isvc.from_experiment(_api_call(_client(serve_opts["--context"]).get_experiment, ns, name))
        docs = isvc.serve_manifests(
            name=flags.get("name") or found.name,
            namespace=namespace or found.namespace,
            storage_uri=found.storage_uri,
            service_account=serve_opts["--service-account"],
            # an explicit --service-account already carries its Secret, unless --secret is given too
            secret=secret or (None if serve_opts["--service-account"] else found.secret),
            endpoint=endpoint or found.endpoint,
            region=region or found.region,
            runtime=serve_opts["--runtime"],
            resources=isvc.resources(
                cpu=_read_quantity("--cpu", resources["cpu"]),
                memory=_read_quantity("--memory", resources["memory"]),
                memory_limit=_read_quantity("--memory-limit", resources["memory_limit"]),
                gpus=found.gpus if gpus is None else gpus,
            ),
            node_selector=selector,
            source=found.origin,
            llm=found.llm,
        )
    except isvc.ServeError as err:
        _fail(str(err))
    account = docs[0] if docs[0]["kind"] == "ServiceAccount" else None
    if account:  # stdout stays a clean manifest for `kubectl apply -f -`
        meta = account["metadata"]
        hint = isvc.secret_annotation_hint(account["secrets"][0]["name"], meta.get("namespace"),
                                           meta.get("annotations") or {})
        if hint:
            typer.echo(hint, err=True)
    if fmt == "json":
        doc = docs[0] if len(docs) == 1 else {"apiVersion": "v1", "kind": "List", "items": docs}
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo("---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs).rstrip("\n"))


@app.command("crd")
def crd_command(
    with_peering: bool = typer.Option(False, "--with-peering", help="Also print kopf's peering CRDs."),
    write: list[str] = typer.Option(None, "--write", help="Write every CRD file into this folder instead."),
) -> None:
    """Print the SparsifyExperiment CRD (generated from the models)."""
    if write:
        from pathlib import Path

        for folder in write:
            for fname, text in crd_mod.crd_files().items():
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / fname).write_text(text, encoding="utf-8")
                typer.echo(f"wrote {Path(folder) / fname}")
        return
    docs = [crd_mod.experiment_crd()] + (crd_mod.peering_crds() if with_peering else [])
    typer.echo(
        crd_mod.HEADER
        + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs).rstrip("\n")
    )


# ---- commands that talk to a cluster ----------------------------------------------------------------


def _client(context: str | None):
    try:
        from sparsify_operator.kube import Kube, load_configuration
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the install
        _fail(f"the '{err.name}' package is missing; install sparsify-k8s[operator]")
    try:
        return Kube(load_configuration(context=context))
    except Exception as err:  # kubeconfig problems are many; say what and where
        _fail(f"cannot load the kube config{f' for context {context}' if context else ''}: {err}")


def _namespace(namespace: str | None, context: str | None) -> str:
    if namespace:
        return namespace
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts()
        if context:
            contexts, _ = config.list_kube_config_contexts()
            active = next((c for c in contexts if c["name"] == context), active)
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"


def _api_call(fn, *args):
    from sparsify_operator.kube import ApiError

    try:
        return fn(*args)
    except ApiError as err:
        if err.status == 404:
            _fail(f"not found: {err.message or err.reason}")
        _fail(f"the API server refused the request: {err.message or err}")
    except OSError as err:
        _fail(f"cannot reach the cluster: {err}")
    return None


def _load_manifests(files: list[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for source in files:
        try:
            text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
            loaded = [d for d in yaml.safe_load_all(text) if d]
        except OSError as err:
            _fail(f"cannot read '{source}': {err.strerror}")
        except yaml.YAMLError as err:
            _fail(f"'{source}' is not valid YAML: {err}")
        for doc in loaded:
            if not isinstance(doc, dict) or doc.get("kind") != KIND:
                _fail(
                    f"'{source}' holds a {doc.get('kind') if isinstance(doc, dict) else 'non-object'}; "
                    f"only {KIND} manifests can be applied here"
                )
            name = (doc.get("metadata") or {}).get("name")
            if not name:
                _fail(f"'{source}': metadata.name is missing")
            try:
                jobs.validate_spec(doc)  # the operator's own check: schema, then runnable in a cluster
            except jobs.SpecError as err:
                _fail(f"'{source}' ({name}): {err}")
            docs.append(doc)
    return docs


@app.command("apply")
def apply_command(
    files: list[str] = typer.Option(..., "--filename", "-f", help="Manifest file(s), '-' for stdin."),
    namespace: str | None = _NS,
    context: str | None = _CTX,
) -> None:
    """Create (or update the suspend flag of) SparsifyExperiments from manifests."""
    docs = _load_manifests(files)
    kube = _client(context)
    for doc in docs:
        ns = (doc.get("metadata") or {}).get("namespace") or _namespace(namespace, context)
        name = doc["metadata"]["name"]
        doc["metadata"]["namespace"] = ns
        from sparsify_operator.kube import ApiError

        try:
            kube.create_experiment(ns, doc)
            typer.echo(f"sparsifyexperiment/{name} created")
        except ApiError as err:
            if err.status != 409:
                _fail(f"creating {ns}/{name} failed: {err.message or err}")
            _api_call(kube.patch_experiment, ns, name, {"spec": doc.get("spec") or {}})
            typer.echo(f"sparsifyexperiment/{name} configured")


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    try:
        start = time.mktime(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return "-"
    seconds = max(0, int(time.time() - start))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _row(obj: dict[str, Any]) -> list[str]:
    exp = (obj.get("spec") or {}).get("experiment") or {}
    st = obj.get("status") or {}
    speedup = (st.get("results") or {}).get("speedup")
    return [
        obj["metadata"]["name"],
        st.get("phase") or "-",
        exp.get("type", "-"),
        exp.get("useCase", "-"),
        str(exp.get("optimLevel", "-")),
        f"{speedup:.2f}x" if speedup else "-",
        _age(obj["metadata"].get("creationTimestamp")),
    ]


def _table(rows: list[list[str]]) -> str:
    header = ["NAME", "PHASE", "TYPE", "USE CASE", "OPTIM", "SPEEDUP", "AGE"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


@app.command("list")
def list_command(
    namespace: str | None = _NS,
    context: str | None = _CTX,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A"),
) -> None:
    """List SparsifyExperiments with phase and headline results."""
    kube = _client(context)
    items = _api_call(kube.list_experiments, None if all_namespaces else _namespace(namespace, context))
    typer.echo(_table([_row(o) for o in items or []]))


@app.command("get")
def get_command(
    name: str | None = typer.Argument(None, help="Experiment name (omit to list)."),
    namespace: str | None = _NS,
    context: str | None = _CTX,
    output: str = typer.Option("table", "--output", "-o", help="table, yaml or json."),
) -> None:
    """Show one experiment (status, results) or list them."""
    if output not in ("table", "yaml", "json"):
        _fail(f"--output must be table, yaml or json, got '{output}'")
    kube = _client(context)
    ns = _namespace(namespace, context)
    if name is None:
        items = _api_call(kube.list_experiments, ns) or []
        typer.echo(_table([_row(o) for o in items]) if output == "table" else _dump(items, output))
        return
    obj = _api_call(kube.get_experiment, ns, name)
    if output != "table":
        typer.echo(_dump(obj, output).rstrip("\n"))
        return
    typer.echo(_table([_row(obj)]))
    st = obj.get("status") or {}
    if st.get("message"):
        typer.echo(f"\n{st.get('reason', '')}: {st['message']}")
    for key, value in (st.get("results") or {}).items():
        typer.echo(f"  {key}: {value}")


@app.command("watch")
def watch_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: str | None = _NS,
    context: str | None = _CTX,
    interval: float = typer.Option(2.0, "--interval", help="Seconds between polls."),
    timeout: float = typer.Option(0, "--timeout", help="Give up after this many seconds (0 = never)."),
) -> None:
    """Follow an experiment's phase and progress until it finishes (exit 1 when it fails)."""
    kube = _client(context)
    ns = _namespace(namespace, context)
    start = time.monotonic()
    last = None
    while True:
        obj = _api_call(kube.get_experiment, ns, name)
        st = obj.get("status") or {}
        line = (
            st.get("phase") or "Pending",
            st.get("reason") or "",
            st.get("message") or "",
            st.get("attempts"),
        )
        if line != last:
            attempts = f" attempt {line[3]}" if line[3] else ""
            typer.echo(f"{time.strftime('%H:%M:%S')} {line[0]:<10} {line[1]}{attempts}: {line[2]}")
            last = line
        if line[0] in TERMINAL_PHASES:
            for key, value in (st.get("results") or {}).items():
                typer.echo(f"  {key}: {value}")
            raise typer.Exit(0 if line[0] == "Succeeded" else 1)
        if timeout and time.monotonic() - start > timeout:
            _fail(f"{name} is still {line[0]} after {timeout:.0f}s")
        time.sleep(interval)


@app.command("logs")
def logs_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: str | None = _NS,
    context: str | None = _CTX,
    tail: int | None = typer.Option(None, "--tail", help="Only the last N lines."),
) -> None:
    """Print the runner's log (the latest pod of the experiment's Job)."""
    kube = _client(context)
    ns = _namespace(namespace, context)
    obj = _api_call(kube.get_experiment, ns, name)
    job = (obj.get("status") or {}).get("jobName") or jobs.job_name(name)
    pods = _api_call(kube.list_job_pods, ns, job) or []
    if not pods:
        _fail(f"experiment {name} has no runner pod yet (Job {job}); try `sparsifyctl watch {name}`")
    pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    typer.echo(_api_call(kube.pod_logs, ns, pod["metadata"]["name"], tail), nl=False)


@app.command("delete")
def delete_command(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: str | None = _NS,
    context: str | None = _CTX,
) -> None:
    """Delete an experiment (its Job and pods go with it)."""
    kube = _client(context)
    _api_call(kube.delete_experiment, _namespace(namespace, context), name)
    typer.echo(f"sparsifyexperiment/{name} deleted")
