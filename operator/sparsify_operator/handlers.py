"""Thin kopf handlers (explicit ids); the logic lives in ``reconcile`` / ``jobs`` / ``status``.

``memo.reconciler`` is set by the startup handler (or passed in by a test/benchmark via
``kopf.operator(memo=kopf.Memo(reconciler=...))``).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from . import metrics
from .jobs import LABEL_MANAGED, MANAGED_BY
from .kube import Kube
from .models import GROUP, PLURAL, VERSION
from .reconcile import Reconciler
from .settings import OperatorSettings

ANNOTATION_PREFIX = "sparsify.dev"


def _emit(body: dict[str, Any], etype: str, reason: str, message: str) -> None:
    # kopf posts Events asynchronously with the operator's own credentials.
    kopf.event(dict(body), type=etype, reason=reason, message=message[:1024])


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings shared by the real operator, the tests and the benchmark."""
    # Handler progress and the diff base live in annotations, not in status.kopf.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/cleanup"
    # Watch timeouts: reconnect regularly instead of trusting a silent stream forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # kopf's own log lines become Events only from warnings up; ours are explicit.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]


@kopf.on.startup(id="configure")
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    # API calls run in threads (the kubernetes client is sync): more than the default few.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32, thread_name_prefix="kube"))
    # Namespace mode: no cluster-wide namespace scanning (the Role grants none).
    settings.scanning.disabled = bool(memo.get("namespaced", False))
    if getattr(memo, "reconciler", None) is None:
        memo.reconciler = Reconciler(Kube(), OperatorSettings.from_env(), emit=_emit)


def _reconciler(memo: kopf.Memo) -> Reconciler:
    return memo.reconciler


@kopf.on.resume(GROUP, VERSION, PLURAL, id="ensure-job")
@kopf.on.create(GROUP, VERSION, PLURAL, id="ensure-job")
async def ensure_job(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("ensure-job"):
        await _reconciler(memo).ensure_job(_plain(body))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.suspend", id="suspend")
async def suspend(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("suspend"):
        await _reconciler(memo).sync_suspend(_plain(body))


@kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup")
async def cleanup(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("cleanup"):
        await _reconciler(memo).cleanup(_plain(body))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED: MANAGED_BY}, id="follow-job")
async def follow_job(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("follow-job"):
        await _reconciler(memo).job_event(event["object"], event.get("type") or "MODIFIED")


@kopf.on.event(GROUP, VERSION, PLURAL, id="phase-metrics")
def phase_metrics(event: kopf.RawEvent, **_: Any) -> None:
    obj = event["object"]
    uid = obj.get("metadata", {}).get("uid", "")
    metrics.track_phase(uid, (obj.get("status") or {}).get("phase"), deleted=event.get("type") == "DELETED")


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.get("metadata", {})),
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {})),
    }


# The SparsifySweep handlers register with kopf on import (they reuse _emit above).
from . import sweep_handlers  # noqa: E402, F401
