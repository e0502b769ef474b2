"""Thin kopf handlers (explicit ids) for experiments and sweeps: each one only names the
object to converge and calls ``Reconciler.sync_experiment`` / ``sync_sweep`` (``reconcile``),
which read everything fresh and compute with the pure ``jobs`` / ``status`` /
``sweep_reconcile``. Deletion is the one other step (``cleanup`` / ``cleanup_sweep``).

``memo.reconciler`` is set by the startup handler (or passed in by a test/benchmark via
``kopf.operator(memo=kopf.Memo(reconciler=...))``).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from . import jobset, metrics
from .jobs import LABEL_MANAGED, MANAGED_BY
from .kube import Kube
from .models import GROUP, PLURAL, TERMINAL_PHASES, VERSION
from .reconcile import Reconciler, owner_experiment
from .settings import OperatorSettings
from .sweep_models import LABEL_SWEEP, SWEEP_KIND, SWEEP_PLURAL

ANNOTATION_PREFIX = "sparsify.dev"
RESYNC_INTERVAL_S = 60.0  # sweeps: a safety net for a missed child event


def post_event(body: dict[str, Any], etype: str, reason: str, message: str) -> None:
    """The reconciler's Event sink: kopf posts Events asynchronously with the operator's credentials."""
    kopf.event(dict(body), type=str(etype), reason=str(reason), message=message[:1024])


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
        memo.reconciler = Reconciler(Kube(), OperatorSettings.from_env(), emit=post_event)


def _reconciler(memo: kopf.Memo) -> Reconciler:
    return memo.reconciler


async def _sync(
    memo: kopf.Memo, handler: str, namespace: str, name: str, uid: str | None, *, sweep: bool = False
) -> None:
    reconciler = _reconciler(memo)
    with metrics.timed(handler):
        await (reconciler.sync_sweep if sweep else reconciler.sync_experiment)(namespace, name, uid)


def _ref(body: kopf.Body) -> tuple[str, str, str | None]:
    return body.meta["namespace"], body.meta["name"], body.meta.get("uid")


# ---- SparsifyExperiment -----------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL, id="ensure-job")
@kopf.on.create(GROUP, VERSION, PLURAL, id="ensure-job")
async def ensure_job(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _sync(memo, "ensure-job", *_ref(body))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="spec-changed")
async def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Only ``spec.suspend`` may change once the Job exists (a CEL rule): it syncs the Job."""
    await _sync(memo, "spec-changed", *_ref(body))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED: MANAGED_BY}, id="follow-job")
async def follow_job(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    job = event["object"]
    owner = owner_experiment(job)
    if owner is not None:
        await _sync(memo, "follow-job", job["metadata"]["namespace"], owner["name"], owner.get("uid"))


# spec.nodes > 1: the experiment's JobSet (kopf leaves this unserved where JobSet is not installed).
@kopf.on.event(
    jobset.GROUP, jobset.VERSION, jobset.PLURAL, labels={LABEL_MANAGED: MANAGED_BY}, id="follow-jobset"
)
async def follow_jobset(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    await follow_job(event=event, memo=memo)


@kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup")
async def cleanup(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("cleanup"):
        await _reconciler(memo).cleanup(_plain(body))


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


# ---- SparsifySweep ------------------------------------------------------------------------------------
# Re-planned on the sweep's own create/resume, a slow timer as a safety net, and every event
# of a child experiment (label sparsify.dev/sweep): a child finishing frees a slot.


@kopf.on.resume(GROUP, VERSION, SWEEP_PLURAL, id="sweep-plan")
@kopf.on.create(GROUP, VERSION, SWEEP_PLURAL, id="sweep-plan")
async def sweep_plan(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _sync(memo, "sweep-plan", *_ref(body), sweep=True)


@kopf.timer(
    GROUP,
    VERSION,
    SWEEP_PLURAL,
    interval=RESYNC_INTERVAL_S,
    initial_delay=RESYNC_INTERVAL_S,
    id="sweep-resync",
)
async def sweep_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return
    await _sync(memo, "sweep-resync", *_ref(body), sweep=True)


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_SWEEP: kopf.PRESENT}, id="sweep-child")
async def sweep_child(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    meta = event["object"]["metadata"]
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == SWEEP_KIND:
            await _sync(memo, "sweep-child", meta["namespace"], ref["name"], ref.get("uid"), sweep=True)


@kopf.on.delete(GROUP, VERSION, SWEEP_PLURAL, id="sweep-cleanup")
async def sweep_cleanup(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("sweep-cleanup"):
        await _reconciler(memo).cleanup_sweep(_plain(body))
