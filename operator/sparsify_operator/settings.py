"""Operator settings: defaults for every Job (image, storage, telemetry), from the environment.

The Helm chart sets these as ``SPARSIFY_*`` environment variables on the operator
Deployment; an experiment's own spec fields win over them.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

DEFAULT_RUNNER_IMAGE = "ghcr.io/sparsify-k8s/sparsify-runner:0.1.0"


class OperatorSettings(BaseModel):
    runner_image: str = DEFAULT_RUNNER_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # storage defaults (spec.storage overrides)
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_verify_ssl: bool = True
    secret_name: str | None = Field(None, description="Default credentials Secret (per namespace).")
    # runner telemetry
    pushgateway_url: str | None = None
    runner_metrics_port: int | None = 9090
    # pod security / placement defaults
    run_as_user: int = 1000
    gpu_resource: str = "nvidia.com/gpu"
    gpu_tolerations: bool = True
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    # Validate that spec.storage.secretRef exists before creating the Job (needs `get` on secrets).
    check_secrets: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str | None:
            value = env.get(f"SPARSIFY_{name}")
            return value if value not in (None, "") else None

        def flag(name: str, default: bool) -> bool:
            value = get(name)
            return default if value is None else value.lower() in ("1", "true", "yes", "on")

        data: dict[str, object] = {
            "runner_image": get("RUNNER_IMAGE") or DEFAULT_RUNNER_IMAGE,
            "image_pull_policy": get("IMAGE_PULL_POLICY") or "IfNotPresent",
            "s3_endpoint": get("S3_ENDPOINT"),
            "s3_region": get("S3_REGION"),
            "s3_verify_ssl": flag("S3_VERIFY_SSL", True),
            "secret_name": get("SECRET_NAME"),
            "pushgateway_url": get("PUSHGATEWAY_URL"),
            "runner_metrics_port": int(get("RUNNER_METRICS_PORT") or 9090) or None,
            "run_as_user": int(get("RUN_AS_USER") or 1000),
            "gpu_resource": get("GPU_RESOURCE") or "nvidia.com/gpu",
            "gpu_tolerations": flag("GPU_TOLERATIONS", True),
            "check_secrets": flag("CHECK_SECRETS", True),
        }
        ttl = get("TTL_SECONDS_AFTER_FINISHED")
        if ttl is not None:
            data["ttl_seconds_after_finished"] = int(ttl) if int(ttl) >= 0 else None
        return cls.model_validate(data)
