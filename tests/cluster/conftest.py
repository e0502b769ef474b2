"""A real Kubernetes control plane with simulated GPU nodes, on 127.0.0.1 only.

`scripts/build-control-plane.sh` (run by `make test-deps`) builds etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok into `.tools/control-plane/current`. A test whose
binaries are missing skips with the reason and the build log; a built binary that does not start
fails the test.

The session fixture starts, each in its own process group, logs in a pytest temporary folder:

* etcd (`--unsafe-no-fsync`);
* kube-apiserver: TLS with a CA made here, x509 client-cert authentication (the admin is in
  `system:masters`), `--authorization-mode=RBAC`, a service-account signing key and issuer so the
  TokenRequest API issues tokens, `--endpoint-reconciler-type=none` (the reconciler refuses a
  loopback advertise address);
* kube-controller-manager with the controllers the tests rely on (Job, garbage collector,
  service accounts and their tokens, namespaces, TTL after finished, pod GC), as the admin;
* kube-scheduler, as the admin;
* kwok, managing the nodes annotated `kwok.x-k8s.io/node: fake`, with kwok's own stages (taken
  from the kwok module by the build script): nodes become Ready, pods become Ready and Job pods
  complete. One extra stage of ours fails the runner pods of FAILING_EXPERIMENT with exit code 2
  (the runner's bad-input code) and a termination message;
* then N Node objects: `nvidia.com/gpu` capacity, the GPU taint, an A100 product label;
* where it was built: the JobSet CRD (from the jobset module) and JobSet's controller manager,
  with its own webhook certificate and no webhook configuration (the API server never calls it).
  Without it `Cluster.jobset_missing` says why, and only the JobSet tests skip.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from loopback_plane import (
    PLANE_DIR,
    Certs,
    Proc,
    admin_ssl_context,
    free_port,
    https_ok,
    make_certs,
    make_signing_key,
    missing_reason,
    retry_port_race,
    start_etcd,
    started,
    write_kubeconfig,
)

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
JOBSET_BINARIES = ("jobset-controller", "jobset-crds")
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    # lifts the node.kubernetes.io/not-ready taint that admission puts on every new Node
    "node-lifecycle-controller",
)
NODE_COUNT = 3
GPUS_PER_NODE = 4
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"  # examples/k8s/training-aware.yaml selects it
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
EXPERIMENT_LABEL = "sparsify.dev/experiment"
FAILING_EXPERIMENT = "runner-fails"
FAILURE_EXIT_CODE = 2
FAILURE_MESSAGE = "simulated runner failure: no such object s3://sparsify/models/missing.onnx"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc"
# log lines of no help in a failure message (kwok's per-object patches, kopf's per-event handler)
_LOG_NOISE = ("Patch node", "Handler 'phase-metrics'", "GET /healthz")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.slow)


# ---- components ---------------------------------------------------------------------------------


@dataclass
class Started:
    proc: Proc
    seconds: float
    url: str = ""


def _insecure_ctx():
    # the controller-manager and scheduler serve /healthz with a self-signed certificate they make
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _start_apiserver(work: Path, etcd_url: str, certs: Certs, sa_key: Path, sa_pub: Path) -> Started:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [
        str(PLANE_DIR / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={work / 'apiserver-certs'}",
        f"--tls-cert-file={certs.server_cert}",
        f"--tls-private-key-file={certs.server_key}",
        f"--client-ca-file={certs.ca}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={sa_pub}",
        f"--service-account-signing-key-file={sa_key}",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--endpoint-reconciler-type=none",
        "--v=1",
    ]
    proc = Proc("kube-apiserver", argv, work / "kube-apiserver.log")
    ctx = admin_ssl_context(certs)
    seconds = started(proc, lambda: https_ok(f"{url}/readyz", ctx), "kube-apiserver")
    return Started(proc, seconds, url)


def _component_argv(binary: str, kubeconfig: Path, port: int) -> list[str]:
    return [
        str(PLANE_DIR / binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--authentication-skip-lookup",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
        "--v=1",
    ]


def _start_controller_manager(work: Path, kubeconfig: Path, certs: Certs, sa_key: Path) -> Started:
    port = free_port()
    argv = [
        *_component_argv("kube-controller-manager", kubeconfig, port),
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={sa_key}",
        f"--root-ca-file={certs.ca}",
        "--use-service-account-credentials=false",
        f"--cert-dir={work / 'kcm-certs'}",
    ]
    proc = Proc("kube-controller-manager", argv, work / "kube-controller-manager.log")
    ctx = _insecure_ctx()
    seconds = started(
        proc, lambda: https_ok(f"https://127.0.0.1:{port}/healthz", ctx), "kube-controller-manager"
    )
    return Started(proc, seconds)


def _start_scheduler(work: Path, kubeconfig: Path) -> Started:
    port = free_port()
    argv = [*_component_argv("kube-scheduler", kubeconfig, port), f"--cert-dir={work / 'scheduler-certs'}"]
    proc = Proc("kube-scheduler", argv, work / "kube-scheduler.log")
    ctx = _insecure_ctx()
    seconds = started(proc, lambda: https_ok(f"https://127.0.0.1:{port}/healthz", ctx), "kube-scheduler")
    return Started(proc, seconds)


def failure_stage() -> dict[str, Any]:
    """A kwok Stage that ends the running runner pod of FAILING_EXPERIMENT as the runner does on
    bad input: exit code 2 with a termination message."""
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": "sparsify-runner-fails"},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {
                "matchExpressions": [
                    {
                        "key": f'.metadata.labels["{EXPERIMENT_LABEL}"]',
                        "operator": "In",
                        "values": [FAILING_EXPERIMENT],
                    },
                    {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                    {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                ]
            },
            "next": {
                "statusTemplate": (
                    "{{ $now := Now }}\n"
                    "containerStatuses:\n"
                    "{{ range .spec.containers }}\n"
                    "- image: {{ .image | Quote }}\n"
                    "  name: {{ .name | Quote }}\n"
                    "  ready: false\n"
                    "  restartCount: 0\n"
                    "  started: false\n"
                    "  state:\n"
                    "    terminated:\n"
                    f"      exitCode: {FAILURE_EXIT_CODE}\n"
                    "      reason: Error\n"
                    f"      message: {FAILURE_MESSAGE!r}\n"
                    "      startedAt: {{ $now | Quote }}\n"
                    "      finishedAt: {{ $now | Quote }}\n"
                    "{{ end }}\n"
                    "phase: Failed\n"
                )
            },
        },
    }


def kwok_stages() -> list[dict[str, Any]]:
    """kwok's own stages from the built module, with pod-complete leaving FAILING_EXPERIMENT's pods
    to failure_stage()."""
    stages = []
    for path in sorted((PLANE_DIR / "kwok-stages").glob("*.yaml")):
        stage = yaml.safe_load(path.read_text(encoding="utf-8"))
        if stage["metadata"]["name"] == "pod-complete":
            stage = copy.deepcopy(stage)
            stage["spec"]["selector"]["matchExpressions"].append(
                {
                    "key": f'.metadata.labels["{EXPERIMENT_LABEL}"]',
                    "operator": "NotIn",
                    "values": [FAILING_EXPERIMENT],
                }
            )
        stages.append(stage)
    names = {s["metadata"]["name"] for s in stages}
    missing = {"node-initialize", "pod-ready", "pod-complete"} - names
    if missing:
        raise RuntimeError(f"kwok stages {sorted(missing)} missing from {PLANE_DIR / 'kwok-stages'}")
    return [*stages, failure_stage()]


def _start_kwok(work: Path, kubeconfig: Path) -> Started:
    port = free_port()
    config = work / "kwok.yaml"
    config.write_text(yaml.safe_dump_all(kwok_stages()), encoding="utf-8")
    key, value = KWOK_ANNOTATION
    argv = [
        str(PLANE_DIR / "kwok"),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        f"--server-address=127.0.0.1:{port}",
        "--node-ip=127.0.0.1",
        "--cidr=10.244.0.0/16",
    ]
    proc = Proc("kwok", argv, work / "kwok.log")

    def ready():
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200, f"HTTP {resp.status}"

    return Started(proc, started(proc, ready, "kwok"))


def _jobset_crd() -> dict[str, Any]:
    (path,) = (PLANE_DIR / "jobset-crds").glob("*.yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _install_crd(api, crd: dict[str, Any]) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    name = crd["metadata"]["name"]

    def established():
        conds = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)

    wait_for(f"CRD {name} Established", established, timeout_s=30)


def _start_jobset(work: Path, kubeconfig: Path, certs: Certs) -> Started:
    """JobSet's manager: leader election and metrics off, health on loopback, its webhook server on
    loopback with our server certificate (no cert-controller)."""
    cert_dir = work / "jobset-certs"
    cert_dir.mkdir()
    (cert_dir / "tls.crt").write_bytes(certs.server_cert.read_bytes())
    (cert_dir / "tls.key").write_bytes(certs.server_key.read_bytes())
    health, webhook = free_port(), free_port()
    config = work / "jobset-config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
                "kind": "Configuration",
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
                "webhook": {"host": "127.0.0.1", "port": webhook, "certDir": str(cert_dir)},
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
            }
        ),
        encoding="utf-8",
    )
    argv = [
        str(PLANE_DIR / "jobset-controller"),
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        "--metrics-bind-address=0",
        f"--health-probe-bind-address=127.0.0.1:{health}",
        "--leader-elect=false",
    ]
    proc = Proc("jobset-controller", argv, work / "jobset-controller.log")

    def ready():
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as resp:
            return resp.status == 200, f"HTTP {resp.status}"

    return Started(proc, started(proc, ready, "jobset-controller"))


def gpu_node(name: str) -> dict[str, Any]:
    key, value = KWOK_ANNOTATION
    capacity = {
        "cpu": "64",
        "memory": "512Gi",
        "ephemeral-storage": "2Ti",
        "pods": "110",
        GPU_RESOURCE: str(GPUS_PER_NODE),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.product": GPU_PRODUCT,
            },
        },
        # the GPU taint that clusters put on GPU nodes: only pods that ask for GPUs tolerate it
        "spec": {"taints": [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


# ---- the cluster ----------------------------------------------------------------------------------


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.25) -> Any:
    """Poll `probe` until it returns something truthy (returned); a timeout raises with `what`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Cluster:
    """The running plane and how to reach it."""

    server: str
    certs: Certs
    kubeconfig: Path
    work: Path
    procs: dict[str, Proc]
    startup_s: dict[str, float]
    nodes: list[str] = field(default_factory=list)
    jobset_missing: str | None = "JobSet not started"

    def api_client(self, token: str | None = None):
        """A kubernetes ApiClient as the admin (client certificate) or with a bearer token."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.certs.ca)
        cfg.verify_ssl = True
        if token is None:
            cfg.cert_file = str(self.certs.admin_cert)
            cfg.key_file = str(self.certs.admin_key)
        else:
            cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)

    def token_kubeconfig(self, name: str, token: str) -> Path:
        return write_kubeconfig(self.work / f"{name}.kubeconfig", self.server, self.certs, token=token)

    def check_alive(self) -> None:
        for proc in self.procs.values():
            proc.check_alive()

    def logs(self) -> str:
        """The last lines of every log (for a failure message), the plane's noise left out."""
        parts = []
        for name, proc in self.procs.items():
            lines = [ln for ln in proc.tail(200).splitlines() if not any(n in ln for n in _LOG_NOISE)]
            parts.append(f"--- {name} ({proc.log}):\n" + "\n".join(lines[-12:]))
        return "\n".join(parts)


def _create_nodes(api, count: int) -> list[str]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    names = [f"kwok-gpu-{i}" for i in range(count)]
    for name in names:
        core.create_node(gpu_node(name))

    def schedulable(node) -> bool:
        conds = {c.type: c.status for c in node.status.conditions or []}
        taints = {t.key for t in node.spec.taints or []}
        return conds.get("Ready") == "True" and taints == {GPU_RESOURCE}

    def all_schedulable():
        return sum(schedulable(n) for n in core.list_node(label_selector="type=kwok").items) == count

    # kwok's node-initialize stage reports Ready; the node lifecycle controller then lifts the
    # not-ready taint that the TaintNodesByCondition admission plugin put on the new Node
    wait_for(f"{count} kwok nodes Ready, only the GPU taint left", all_schedulable, timeout_s=60)
    return names


def _start_all(work: Path, stack: list[Proc]) -> Cluster:
    certs = make_certs(work)
    sa_key, sa_pub = make_signing_key(work)
    times: dict[str, float] = {}

    def add(name: str, s: Started) -> Started:
        stack.append(s.proc)
        times[name] = round(s.seconds, 2)
        return s

    etcd, etcd_url, etcd_s = retry_port_race(lambda: start_etcd(PLANE_DIR / "etcd", work))
    add("etcd", Started(etcd, etcd_s))
    api = add(
        "kube-apiserver", retry_port_race(lambda: _start_apiserver(work, etcd_url, certs, sa_key, sa_pub))
    )
    kubeconfig = write_kubeconfig(work / "admin.kubeconfig", api.url, certs)
    add(
        "kube-controller-manager",
        retry_port_race(lambda: _start_controller_manager(work, kubeconfig, certs, sa_key)),
    )
    add("kube-scheduler", retry_port_race(lambda: _start_scheduler(work, kubeconfig)))
    add("kwok", retry_port_race(lambda: _start_kwok(work, kubeconfig)))
    return Cluster(
        server=api.url,
        certs=certs,
        kubeconfig=kubeconfig,
        work=work,
        procs={p.name: p for p in stack},
        startup_s=times,
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    reason = missing_reason(*BINARIES)
    if reason:
        pytest.skip(reason)
    if not (PLANE_DIR / "kwok-stages").is_dir():
        pytest.skip(
            f"kwok stages not copied to {PLANE_DIR / 'kwok-stages'}: rerun scripts/build-control-plane.sh"
        )
    work = tmp_path_factory.mktemp("cluster")
    stack: list[Proc] = []
    try:
        plane = _start_all(work, stack)
        t0 = time.monotonic()
        with plane.api_client() as api:
            plane.nodes = _create_nodes(api, NODE_COUNT)
        plane.startup_s["nodes-ready"] = round(time.monotonic() - t0, 2)
        plane.jobset_missing = missing_reason(*JOBSET_BINARIES)
        if plane.jobset_missing is None:
            with plane.api_client() as api:
                _install_crd(api, _jobset_crd())
            started_jobset = retry_port_race(lambda: _start_jobset(work, plane.kubeconfig, plane.certs))
            stack.append(started_jobset.proc)
            plane.procs[started_jobset.proc.name] = started_jobset.proc
            plane.startup_s["jobset-controller"] = round(started_jobset.seconds, 2)
        yield plane
    finally:
        for proc in reversed(stack):
            proc.stop()


@pytest.fixture(scope="session")
def admin_api(cluster) -> Iterator[Any]:
    api = cluster.api_client()
    yield api
    api.close()
