"""A small dict-in/dict-out Kubernetes REST client on top of the ``kubernetes`` package.

The ``kubernetes`` package supplies configuration (kubeconfig / in-cluster), auth and TLS;
requests and responses stay plain JSON dicts (the same shape as manifests), which keeps
the reconciler's pure functions free of generated model classes. Imported lazily by
``sparsifyctl`` so that ``generate``/``crd`` work without the package.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from .models import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_configuration(context: str | None = None, kubeconfig: str | None = None):
    """In-cluster config when running in a pod, else the kubeconfig (current context)."""
    import os

    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if context is None and kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)
            return configuration
    except config.ConfigException:
        pass
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return configuration


class Kube:
    """Thread-safe enough for ``asyncio.to_thread`` use (urllib3 pool underneath)."""

    def __init__(self, configuration=None, *, timeout: float = 30.0) -> None:
        from kubernetes import client

        self.api = client.ApiClient(configuration or load_configuration())
        self.timeout = timeout

    # ---- raw -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, body_out, _ = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self.api.rest_client.request(
            method, url, headers=headers, body=body_out, _request_timeout=self.timeout
        )
        data = resp.read()
        if resp.status >= 400:
            try:
                status = json.loads(data)
                raise ApiError(resp.status, status.get("reason", ""), status.get("message", ""))
            except (ValueError, AttributeError):
                raise ApiError(resp.status, resp.reason or "", data[:500].decode(errors="replace")) from None
        if raw:
            return data.decode(errors="replace")
        return json.loads(data) if data else None

    # ---- experiments -----------------------------------------------------------------------
    @staticmethod
    def experiments_path(namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{GROUP}/{VERSION}"
        base += f"/namespaces/{quote(namespace)}/{PLURAL}" if namespace else f"/{PLURAL}"
        return f"{base}/{quote(name)}" if name else base

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any]:
        return self.request("GET", self.experiments_path(namespace, name))

    def list_experiments(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.request("GET", self.experiments_path(namespace))["items"]

    def create_experiment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self.experiments_path(namespace), body=body)

    def patch_experiment(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH", self.experiments_path(namespace, name), body=patch, content_type=MERGE_PATCH
        )

    def delete_experiment(self, namespace: str, name: str) -> None:
        self.request("DELETE", self.experiments_path(namespace, name))

    def patch_experiment_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH",
            self.experiments_path(namespace, name) + "/status",
            body={"status": status},
            content_type=MERGE_PATCH,
        )

    def list_experiments_by_label(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self.request("GET", self.experiments_path(namespace), query={"labelSelector": selector})
        # Filter here too (as for Jobs): selectors are an optimisation, not something to rely on.
        return [
            o
            for o in items["items"]
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    # ---- sweeps ----------------------------------------------------------------------------
    @staticmethod
    def sweeps_path(namespace: str | None, name: str | None = None) -> str:
        from .sweep_models import SWEEP_PLURAL

        base = f"/apis/{GROUP}/{VERSION}"
        base += f"/namespaces/{quote(namespace)}/{SWEEP_PLURAL}" if namespace else f"/{SWEEP_PLURAL}"
        return f"{base}/{quote(name)}" if name else base

    def get_sweep(self, namespace: str, name: str) -> dict[str, Any]:
        return self.request("GET", self.sweeps_path(namespace, name))

    def list_sweeps(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.request("GET", self.sweeps_path(namespace))["items"]

    def patch_sweep_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH",
            self.sweeps_path(namespace, name) + "/status",
            body={"status": status},
            content_type=MERGE_PATCH,
        )

    # ---- jobs ------------------------------------------------------------------------------
    @staticmethod
    def _jobs(namespace: str, name: str | None = None) -> str:
        base = f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs"
        return f"{base}/{quote(name)}" if name else base

    def list_jobs(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self.request("GET", self._jobs(namespace), query={"labelSelector": selector})["items"]
        # Filter here too: selectors are an optimisation, not something to rely on.
        return [
            j
            for j in items
            if all((j["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(self._jobs(namespace, name))

    def _get_or_none(self, path: str) -> Any:
        """GET ``path``; None where it does not exist (404)."""
        try:
            return self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def _delete_in_background(self, path: str) -> bool:
        """DELETE ``path`` with background propagation (the GC removes its pods); False if it was gone."""
        try:
            self.request(
                "DELETE",
                path,
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
            return True
        except ApiError as err:
            if err.status == 404:
                return False
            raise

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self._jobs(namespace), body=body)

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", self._jobs(namespace, name), body=patch, content_type=MERGE_PATCH)

    def delete_job(self, namespace: str, name: str) -> bool:
        return self._delete_in_background(self._jobs(namespace, name))

    # ---- API discovery -----------------------------------------------------------------------
    def serves(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``group_version`` (e.g. a CRD is installed):
        the group/version's discovery document (readable by every authenticated user)."""
        found = self._get_or_none(f"/apis/{group_version}")
        return any(r.get("name") == plural for r in (found or {}).get("resources") or [])

    # ---- jobsets (jobset.x-k8s.io, spec.nodes > 1) ----------------------------------------------
    @staticmethod
    def _jobsets(namespace: str, name: str | None = None) -> str:
        from .jobset import API_VERSION, PLURAL

        base = f"/apis/{API_VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
        return f"{base}/{quote(name)}" if name else base

    def get_jobset(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(self._jobsets(namespace, name))

    def list_jobsets(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self.request("GET", self._jobsets(namespace), query={"labelSelector": selector})["items"]
        return [
            j
            for j in items
            if all((j["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    def create_jobset(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self._jobsets(namespace), body=body)

    def patch_jobset(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", self._jobsets(namespace, name), body=patch, content_type=MERGE_PATCH)

    def delete_jobset(self, namespace: str, name: str) -> bool:
        return self._delete_in_background(self._jobsets(namespace, name))

    def list_jobset_pods(self, namespace: str, jobset_name: str) -> list[dict[str, Any]]:
        from .jobset import LABEL_JOBSET_NAME

        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        query = {"labelSelector": f"{LABEL_JOBSET_NAME}={jobset_name}"}
        items = self.request("GET", path, query=query)["items"]
        return [p for p in items if (p["metadata"].get("labels") or {}).get(LABEL_JOBSET_NAME) == jobset_name]

    # ---- pods, secrets -------------------------------------------------------------------------
    def list_job_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        items = self.request("GET", path, query={"labelSelector": f"job-name={job_name}"})["items"]
        return [p for p in items if (p["metadata"].get("labels") or {}).get("job-name") == job_name]

    def pod_logs(self, namespace: str, pod: str, tail: int | None = None, follow: bool = False) -> str:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        query = {"tailLines": tail, "follow": "true" if follow else None}
        return self.request("GET", path, query=query, raw=True)

    def secret_exists(self, namespace: str, name: str) -> bool:
        return self._get_or_none(f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}") is not None
