"""Run the real operator (kopf + our handlers) in-process against kmock's Kubernetes emulator.

Used by the operator-loop tests and by ``benchmarks/operator_scale.py``. The emulator does
not run Jobs or pods: tests play the kubelet/job-controller by writing Job status and
creating the Job's pods (with a termination message) themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import kmock
from sparsify_operator.models import GROUP, KIND, PLURAL, VERSION

EXP = f"{GROUP}/{VERSION}/{PLURAL}"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


def _kubeconfig(url: str) -> str:
    path = Path(tempfile.mkdtemp(prefix="kmock-")) / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                "users": [{"name": "kmock", "user": {"token": "kmock"}}],
                "contexts": [
                    {
                        "name": "kmock",
                        "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"},
                    }
                ],
            }
        )
    )
    return str(path)


def experiment(name: str, namespace: str = "ml", **spec_over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "experiment": {
            "type": "one-shot",
            "useCase": "image-classification",
            "model": "s3://models/m.onnx",
            "data": "s3://data/calib/",
            "optimLevel": 0.5,
            "output": f"s3://out/{name}",
        },
        "gpus": 1,
        "storage": {"endpoint": "http://minio.storage:9000", "secretRef": {"name": "s3-creds"}},
    }
    spec.update(spec_over)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "spec": spec,
    }


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what the API server does on create: ``generateName``, uid,
    resourceVersion, creationTimestamp (kopf posts Events with ``generateName``)."""

    async def _handle(self, request):
        # kmock matches each request against its whole request log (O(requests) per request);
        # keeping only in-flight requests there keeps long runs (the benchmark) linear.
        try:
            return await self._handle_k8s(request)
        finally:
            with contextlib.suppress(ValueError):
                self._requests.remove(request)

    async def _handle_k8s(self, request):
        if (
            request.method is not None
            and str(request.method).upper().endswith("POST")
            and isinstance(request.data, dict)
            and request.resource is not None
        ):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return await super()._handle(request)


class Cluster:
    """The emulator + a kubeconfig pointing at it (``KUBECONFIG`` is set while inside)."""

    def __init__(self) -> None:
        self.k = Emulator()
        self.server = kmock.Server(self.k)
        self._old_kubeconfig: str | None = None

    async def __aenter__(self) -> Cluster:
        await self.k.__aenter__()
        await self.server.__aenter__()
        res = self.k.resources
        res[EXP] = kmock.ResourceInfo(
            kind=KIND, namespaced=True, verbs=VERBS, subresources={"status"}, singular="sparsifyexperiment"
        )
        res[JOBS] = kmock.ResourceInfo(kind="Job", namespaced=True, verbs=VERBS, subresources={"status"})
        res[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=VERBS, subresources={"log"})
        res["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=VERBS)
        res["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs=VERBS)
        res["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS)
        self.kubeconfig = _kubeconfig(str(self.server.url).rstrip("/"))
        self._old_kubeconfig = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = self.kubeconfig
        # the kubernetes package reads $KUBECONFIG once, at import (kopf's login uses it)
        from kubernetes.config import kube_config

        self._old_default = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = self.kubeconfig
        return self

    async def __aexit__(self, *exc: Any) -> None:
        from kubernetes.config import kube_config

        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = self._old_default
        if self._old_kubeconfig is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = self._old_kubeconfig
        await self.server.__aexit__(*exc)
        await self.k.__aexit__(*exc)

    # ---- API calls through HTTP (so watchers see them) -----------------------------------------
    @staticmethod
    def _path(resource: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def _req(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.k.request(method, path, json=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        status, data = await self._req("POST", self._path(resource, obj["metadata"]["namespace"]), obj)
        assert status < 300, data
        return data

    async def patch(
        self, resource: str, ns: str, name: str, body: dict[str, Any], sub: str | None = None
    ) -> Any:
        status, data = await self._req("PATCH", self._path(resource, ns, name, sub), body)
        assert status < 300, data
        return data

    async def delete(self, resource: str, ns: str, name: str) -> None:
        status, data = await self._req("DELETE", self._path(resource, ns, name))
        assert status < 300, data

    async def get(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        status, data = await self._req("GET", self._path(resource, ns, name))
        return data if status == 200 else None

    async def list(self, resource: str, ns: str) -> list[dict[str, Any]]:
        status, data = await self._req("GET", self._path(resource, ns))
        return data["items"] if status == 200 else []

    async def secret(self, ns: str, name: str) -> None:
        await self.create(
            "v1/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
                "data": {"AWS_ACCESS_KEY_ID": "eA==", "AWS_SECRET_ACCESS_KEY": "eA=="},
            },
        )

    # ---- playing the job controller / kubelet ------------------------------------------------
    async def finish_job(
        self, ns: str, job_name: str, *, exit_code: int, message: str, reason: str = "BackoffLimitExceeded"
    ) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.create(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{job_name}-x1",
                    "namespace": ns,
                    "resourceVersion": "1",
                    "creationTimestamp": now,
                    "labels": {"job-name": job_name, "batch.kubernetes.io/job-name": job_name},
                },
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": "runner",
                            "state": {"terminated": {"exitCode": exit_code, "message": message}},
                        }
                    ],
                },
            },
        )
        if exit_code == 0:
            cond = [{"type": "Complete", "status": "True", "lastTransitionTime": now}]
            status = {"succeeded": 1, "startTime": now, "completionTime": now, "conditions": cond}
        else:
            cond = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "lastTransitionTime": now,
                    "message": "Job has reached the specified backoff limit",
                }
            ]
            status = {"failed": 1, "startTime": now, "conditions": cond}
        await self.patch(JOBS, ns, job_name, {"status": status}, sub="status")


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll an async predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class Operator:
    """The real kopf operator with our handlers, in a background thread with its own loop."""

    def __init__(self, namespaces: list[str], settings=None, reconciler_factory=None) -> None:
        self.namespaces = namespaces
        self.settings = settings
        self.reconciler_factory = reconciler_factory
        self._thread: threading.Thread | None = None
        self._stop: threading.Event = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def _main(self) -> None:
        import kopf
        from sparsify_operator import handlers  # noqa: F401
        from sparsify_operator.kube import Kube
        from sparsify_operator.reconcile import Reconciler
        from sparsify_operator.settings import OperatorSettings

        settings = self.settings or OperatorSettings()
        reconciler = Reconciler(Kube(), settings, emit=handlers.post_event)
        if self.reconciler_factory:
            reconciler = self.reconciler_factory(reconciler)
        try:
            # Cluster-wide: kmock 0.8 cannot parse /api/v1/namespaces (namespace observation).
            asyncio.run(
                kopf.operator(
                    clusterwide=True,
                    standalone=True,
                    stop_flag=self._stop,
                    ready_flag=self.ready,
                    memo=kopf.Memo(reconciler=reconciler),
                )
            )
        except BaseException as err:  # surfaced by the test
            self.error = err

    def __enter__(self) -> Operator:
        self._thread = threading.Thread(target=self._main, daemon=True, name="operator")
        self._thread.start()
        if not self.ready.wait(30):
            raise AssertionError(f"operator did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    async def astop(self) -> None:
        await asyncio.to_thread(self.__exit__, None, None, None)


@contextlib.asynccontextmanager
async def running_operator(namespaces: list[str], **kw: Any):
    op = Operator(namespaces, **kw)
    await asyncio.to_thread(op.__enter__)
    try:
        yield op
    finally:
        await op.astop()
