"""Reconcile: read the object and what it owns, compute the desired state with the pure
functions (``jobs``, ``status``, ``sweep_reconcile``), apply the difference once. No kopf.

``sync_experiment(namespace, name)`` is level-triggered, like Kubeflow Trainer's single
``Reconcile``: every experiment handler (create, resume, spec update) and
every event of its Job call it with the experiment's name only, and it reads everything
fresh, so neither the order nor the number of calls matters. Each call converges when
repeated: the Job is found by its deterministic name (owner checked) or the experiment's
uid label before anything is created, a 409 on create means "already there", a Job that
vanished before finishing is reported instead of re-created, and a call that finds
everything as desired writes nothing. ``sync_sweep`` does the same for a ``SparsifySweep``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import jobs, jobset, metrics, status
from .kube import ApiError, Kube
from .models import KIND, TERMINAL_PHASES, EventType, Phase, Reason
from .settings import OperatorSettings
from .sweep_models import LABEL_SWEEP
from .sweep_reconcile import owned_by, plan

log = logging.getLogger("sparsify_operator")

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (involved object, type, reason, message)

# API statuses that no retry of the same Job create can fix.
PERMANENT_CREATE_ERRORS = (400, 403, 422)


@dataclass(frozen=True)
class ChildKind:
    """What an experiment runs as, and the ``Kube`` methods that read and write it."""

    noun: str
    name: Callable[[str], str]  # experiment name -> the child's deterministic name
    build: Callable[..., dict[str, Any]]  # (experiment, settings, valid=) -> manifest
    get: str
    list: str
    create: str
    patch: str
    delete: str
    pods: str


JOB = ChildKind(
    noun="Job",
    name=jobs.job_name,
    build=jobs.build_job,
    get="get_job",
    list="list_jobs",
    create="create_job",
    patch="patch_job",
    delete="delete_job",
    pods="list_job_pods",
)
JOBSET = ChildKind(
    noun=jobset.KIND,
    name=jobset.jobset_name,
    build=jobset.build_jobset,
    get="get_jobset",
    list="list_jobsets",
    create="create_jobset",
    patch="patch_jobset",
    delete="delete_jobset",
    pods="list_jobset_pods",
)


def child_kind(body: dict[str, Any]) -> ChildKind:
    """One node: a batch/v1 Job; ``spec.nodes`` > 1: a JobSet (the spec is frozen once it exists)."""
    return JOBSET if int((body.get("spec") or {}).get("nodes") or 1) > 1 else JOB


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, emit: EventSink | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.emit = emit or (lambda body, etype, reason, message: None)
        self._locks: dict[str, asyncio.Lock] = {}
        self._jobsets_served = False

    def lock(self, key: str) -> asyncio.Lock:
        """One sync at a time per object (``kind/namespace/name``)."""
        return self._locks.setdefault(key, asyncio.Lock())

    async def _call(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def _read(self, get, namespace: str, name: str, uid: str | None) -> dict[str, Any] | None:
        """The object as stored now; None when it is gone, being deleted, or (with ``uid``)
        a different object of the same name than the one an event was about."""
        try:
            obj = await self._call(get, namespace, name)
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        meta = obj["metadata"]
        if (uid and meta.get("uid") != uid) or meta.get("deletionTimestamp"):
            return None
        return obj

    # ---- experiments -----------------------------------------------------------------------------
    async def _serves_jobsets(self) -> bool:
        """Whether the JobSet CRD is installed (API discovery); a yes is remembered, a no is asked
        again next time (JobSet may be installed while the operator runs)."""
        if not self._jobsets_served:
            self._jobsets_served = await self._call(self.kube.serves, jobset.API_VERSION, jobset.PLURAL)
        return self._jobsets_served

    def _kube(self, kind: ChildKind, op: str) -> Callable[..., Any]:
        return getattr(self.kube, getattr(kind, op))

    async def find_job(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The experiment's Job (or JobSet): by its deterministic name (owner checked), else by
        uid label."""
        meta = body["metadata"]
        kind = child_kind(body)
        if kind is JOBSET and not await self._serves_jobsets():
            return None  # nothing to find; _sync_without_job reports the missing CRD
        job = await self._call(self._kube(kind, "get"), meta["namespace"], kind.name(meta["name"]))
        if job is not None:
            return job if _owned_by(job, meta["uid"]) else None
        found = await self._call(self._kube(kind, "list"), meta["namespace"], {jobs.LABEL_UID: meta["uid"]})
        return found[0] if found else None

    async def sync_experiment(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Converge one experiment: its Job exists (once) and its status says what the Job does.

        ``uid`` (from an event) skips a newer experiment that reuses the name.
        """
        async with self.lock(f"{KIND}/{namespace}/{name}"):
            body = await self._read(self.kube.get_experiment, namespace, name, uid)
            if body is None:
                return
            job = await self.find_job(body)
            if job is None:
                await self._sync_without_job(body)
            else:
                await self._sync_with_job(body, job)

    async def _sync_with_job(self, body: dict[str, Any], job: dict[str, Any]) -> None:
        current = body.get("status") or {}
        job_name = job["metadata"]["name"]
        if current.get("phase") in TERMINAL_PHASES:
            if current.get("jobName") == job_name:
                return  # finished results are final
        else:
            job = await self._sync_suspend(body, job)
        pods = await self._call(self._kube(child_kind(body), "pods"), job["metadata"]["namespace"], job_name)
        update = status.job_observed(body, job, pods, status.now_iso())
        await self._apply(body, update)

    async def _sync_suspend(self, body: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        """The Job's ``spec.suspend`` follows the experiment's; returns the Job as it is now.

        With a ``queueName`` the Job's suspend is Kueue's (admission unsuspends it, and Kueue
        unsuspends an admitted Job again), so the operator never writes it there.
        """
        spec = body.get("spec") or {}
        want = bool(spec.get("suspend"))
        if want == bool((job.get("spec") or {}).get("suspend")) or spec.get("queueName"):
            return job
        meta = job["metadata"]
        kind = child_kind(body)
        patched = await self._call(
            self._kube(kind, "patch"), meta["namespace"], meta["name"], {"spec": {"suspend": want}}
        )
        self.emit(
            body,
            EventType.NORMAL,
            Reason.SUSPENDED if want else Reason.RESUMED,
            f"{kind.noun} {meta['name']} {'suspended' if want else 'resumed'}",
        )
        return patched or {**job, "spec": {**(job.get("spec") or {}), "suspend": want}}

    async def _sync_without_job(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        ns, generation = meta["namespace"], meta.get("generation")
        current = body.get("status") or {}
        now = status.now_iso()
        if current.get("phase") in TERMINAL_PHASES:
            return
        kind = child_kind(body)
        if status.job_was_created(current):
            update = status.job_deleted(
                current, current["jobName"], generation=generation, now=now, noun=kind.noun
            )
            await self._apply(body, update)
            return
        try:
            valid = jobs.validate_spec(body)
            manifest = kind.build(body, self.settings, valid=valid)
        except jobs.SpecError as err:
            await self._apply(
                body, status.invalid_spec(current, err.field, str(err), generation=generation, now=now)
            )
            return
        secret = jobs.secret_name(valid.spec, self.settings)
        if (
            secret
            and self.settings.check_secrets
            and not await self._call(self.kube.secret_exists, ns, secret)
        ):
            where = "spec.storage.secretRef.name" if valid.spec.storage.secret_ref else "operator secretName"
            msg = (
                f"Secret '{secret}' not found in namespace '{ns}'; create it with keys "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
            await self._apply(
                body, status.invalid_spec(current, where, f"{where}: {msg}", generation=generation, now=now)
            )
            return
        if kind is JOBSET and not await self._serves_jobsets():
            update = status.jobset_not_installed(current, valid.spec.nodes, generation=generation, now=now)
            await self._apply(body, update)
            return
        job_name = manifest["metadata"]["name"]
        try:
            created = await self._call(self._kube(kind, "create"), ns, manifest)
        except ApiError as err:
            if err.status == 409:
                existing = await self._call(self._kube(kind, "get"), ns, job_name)
                if existing is not None and _owned_by(existing, meta["uid"]):
                    await self._sync_with_job(body, existing)
                    return
                msg = f"a {kind.noun} named {job_name} already exists and is not owned by this experiment"
                await self._apply(
                    body,
                    status.job_create_failed(
                        current, job_name, msg, generation=generation, now=now, permanent=True
                    ),
                )
                return
            permanent = err.status in PERMANENT_CREATE_ERRORS
            update = status.job_create_failed(
                current,
                job_name,
                f"creating {kind.noun} {job_name} failed: {err}",
                generation=generation,
                now=now,
                permanent=permanent,
            )
            await self._apply(body, update)
            if permanent:
                return
            raise  # transient: the handler is retried (kopf's error delays)
        metrics.JOBS_CREATED.inc()
        update = status.job_started(body, created or manifest, now)
        await self._apply(body, update)
        log.info("created %s %s/%s for experiment %s", kind.noun, ns, job_name, meta["name"])

    async def _apply(self, body: dict[str, Any], update: status.StatusUpdate) -> None:
        """Patch what differs from the stored status (nothing when nothing does), then its Events."""
        current = body.get("status") or {}
        patch = update.changes(current)
        if not patch:
            return
        meta = body["metadata"]
        await self._call(self.kube.patch_experiment_status, meta["namespace"], meta["name"], patch)
        if patch.get("phase") == Phase.FAILED:
            metrics.JOB_FAILURES.labels(reason=update.patch.get("reason") or Reason.FAILED).inc()
        for etype, reason, message in update.events:
            self.emit(body, etype, reason, message)

    async def cleanup(self, body: dict[str, Any]) -> None:
        """Delete the experiment's Job or JobSet (ownerReferences do it too where a GC runs)."""
        meta = body["metadata"]
        kind = child_kind(body)
        if kind is JOBSET and not await self._serves_jobsets():
            found = []
        else:
            found = await self._call(
                self._kube(kind, "list"), meta["namespace"], {jobs.LABEL_UID: meta["uid"]}
            )
        for job in found:
            await self._call(self._kube(kind, "delete"), meta["namespace"], job["metadata"]["name"])
        self._locks.pop(f"{KIND}/{meta['namespace']}/{meta['name']}", None)

    # ---- sweeps -------------------------------------------------------------------------------------
    async def _sweep_children(self, namespace: str, name: str) -> list[dict[str, Any]]:
        # Labelled experiments that are not ours (leftovers of an older sweep of the same name)
        # are kept: plan() reports the name clash instead of creating a duplicate.
        return await self._call(
            self.kube.list_experiments_by_label, namespace, {LABEL_SWEEP: jobs.label_value(name)}
        )

    async def sync_sweep(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Converge one sweep: read it and its children, plan, create the missing children,
        patch what differs in its status (nothing when nothing does)."""
        async with self.lock(f"sweep/{namespace}/{name}"):
            sweep = await self._read(self.kube.get_sweep, namespace, name, uid)
            if sweep is None:
                return
            sweep_uid = sweep["metadata"]["uid"]
            children = await self._sweep_children(namespace, name)
            # A clash with an unlabelled experiment of a child's name shows up as a 409 below.
            result = plan(sweep, children)
            for manifest in result.create:
                child = manifest["metadata"]["name"]
                try:
                    await self._call(self.kube.create_experiment, namespace, manifest)
                    log.info("created experiment %s/%s for sweep %s", namespace, child, name)
                except ApiError as err:
                    if err.status != 409:
                        raise
                    existing = await self._call(self.kube.get_experiment, namespace, child)
                    if not owned_by(existing, sweep_uid):
                        children.append(existing)
            if any(not owned_by(c, sweep_uid) for c in children):
                result = plan(sweep, children)
            current = sweep.get("status") or {}
            patch = {k: v for k, v in result.status.items() if current.get(k) != v}  # None clears
            if patch:
                await self._call(self.kube.patch_sweep_status, namespace, name, patch)
            for etype, reason, message in result.events:
                self.emit(sweep, etype, reason, message)

    async def cleanup_sweep(self, body: dict[str, Any]) -> None:
        """Delete the children (the garbage collector does it too, through ownerReferences)."""
        meta = body["metadata"]
        for child in await self._sweep_children(meta["namespace"], meta["name"]):
            if not owned_by(child, meta["uid"]):
                continue
            try:
                await self._call(self.kube.delete_experiment, meta["namespace"], child["metadata"]["name"])
            except ApiError as err:
                if err.status != 404:
                    raise
        self._locks.pop(f"sweep/{meta['namespace']}/{meta['name']}", None)


def owner_experiment(job: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference of the experiment that controls ``job`` (None for other Jobs)."""
    for ref in job["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND:
            return ref
    return None


def _owned_by(job: dict[str, Any], uid: str) -> bool:
    owner = owner_experiment(job)
    return owner is not None and owner.get("uid") == uid
