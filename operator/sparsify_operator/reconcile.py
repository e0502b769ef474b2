"""Reconcile logic: the pure functions (``jobs``, ``status``) + API calls, no kopf.

Every step converges when repeated: the Job is found by the experiment's uid label or its
deterministic name before anything is created, a 409 on create means "already there",
and a Job that vanished before finishing is reported instead of re-created.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from . import jobs, metrics, status
from .kube import ApiError, Kube
from .models import TERMINAL_PHASES
from .settings import OperatorSettings

log = logging.getLogger("sparsify_operator")

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (experiment body, type, reason, message)


class Reconciler:
    def __init__(self, kube: Kube, settings: OperatorSettings, emit: EventSink | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.emit = emit or (lambda body, etype, reason, message: None)
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    async def _call(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    # ---- helpers -------------------------------------------------------------------------------
    async def find_job(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The experiment's Job: by its deterministic name (owner checked), else by uid label."""
        meta = body["metadata"]
        job = await self._call(self.kube.get_job, meta["namespace"], jobs.job_name(meta["name"]))
        if job is not None:
            return job if _owned_by(job, meta["uid"]) else None
        found = await self._call(self.kube.list_jobs, meta["namespace"], {jobs.LABEL_UID: meta["uid"]})
        return found[0] if found else None

    async def _apply(
        self, body: dict[str, Any], current: dict[str, Any], update: status.StatusUpdate
    ) -> None:
        patch = {k: v for k, v in update.patch.items() if v is not None}
        if all(current.get(k) == v for k, v in patch.items()):
            return
        meta = body["metadata"]
        await self._call(self.kube.patch_experiment_status, meta["namespace"], meta["name"], patch)
        if patch.get("phase") == "Failed" and current.get("phase") != "Failed":
            metrics.JOB_FAILURES.labels(reason=patch.get("reason") or "Failed").inc()
        for etype, reason, message in update.events:
            self.emit(body, etype, reason, message)

    async def _fresh(self, body: dict[str, Any]) -> dict[str, Any] | None:
        meta = body["metadata"]
        try:
            fresh = await self._call(self.kube.get_experiment, meta["namespace"], meta["name"])
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        if fresh["metadata"].get("uid") != meta.get("uid"):
            return None
        return fresh

    # ---- create / resume -------------------------------------------------------------------------
    async def ensure_job(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        async with self.lock(meta["uid"]):
            fresh = await self._fresh(body)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            await self._ensure_job(fresh)

    async def _ensure_job(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
        current = body.get("status") or {}
        now = status.now_iso()
        existing = await self.find_job(body)
        if existing is not None:
            await self._follow(body, existing)
            return
        if current.get("phase") in TERMINAL_PHASES:
            return
        if current.get("jobName"):
            await self._apply(
                body, current, status.job_deleted(current, current["jobName"], generation=generation, now=now)
            )
            return
        try:
            manifest = jobs.build_job(body, self.settings)
            valid = jobs.validate_spec(body)
        except jobs.SpecError as err:
            await self._apply(
                body,
                current,
                status.invalid_spec(current, err.field, str(err), generation=generation, now=now),
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
                body,
                current,
                status.invalid_spec(current, where, f"{where}: {msg}", generation=generation, now=now),
            )
            return
        job_name = manifest["metadata"]["name"]
        try:
            created = await self._call(self.kube.create_job, ns, manifest)
            metrics.JOBS_CREATED.inc()
        except ApiError as err:
            if err.status == 409:
                created = await self._call(self.kube.get_job, ns, job_name)
                if created is not None and _owned_by(created, meta["uid"]):
                    await self._follow(body, created)
                    return
                msg = f"a Job named {job_name} already exists and is not owned by this experiment"
                await self._apply(
                    body,
                    current,
                    status.job_create_failed(
                        current, job_name, msg, generation=generation, now=now, permanent=True
                    ),
                )
                return
            permanent = err.status in (400, 403, 422)
            await self._apply(
                body,
                current,
                status.job_create_failed(
                    current,
                    job_name,
                    f"creating Job {job_name} failed: {err}",
                    generation=generation,
                    now=now,
                    permanent=permanent,
                ),
            )
            if permanent:
                return
            raise
        update = status.job_created(
            current,
            job_name,
            suspended=valid.spec.suspend,
            queued=bool(valid.spec.queue_name),
            generation=generation,
            now=now,
        )
        await self._apply(body, current, update)
        log.info("created Job %s/%s for experiment %s", ns, job_name, name)
        del created

    # ---- follow the Job ------------------------------------------------------------------------
    async def job_event(self, job: dict[str, Any], event_type: str) -> None:
        owner = _controller(job)
        if owner is None:
            return
        ns = job["metadata"]["namespace"]
        stub = {"metadata": {"namespace": ns, "name": owner["name"], "uid": owner["uid"]}}
        async with self.lock(owner["uid"]):
            body = await self._fresh(stub)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            current = body.get("status") or {}
            if event_type == "DELETED":
                if current.get("phase") not in TERMINAL_PHASES:
                    await self._apply(
                        body,
                        current,
                        status.job_deleted(
                            current,
                            job["metadata"]["name"],
                            generation=body["metadata"].get("generation"),
                            now=status.now_iso(),
                        ),
                    )
                return
            await self._follow(body, job)

    async def _follow(self, body: dict[str, Any], job: dict[str, Any]) -> None:
        current = body.get("status") or {}
        if current.get("phase") in TERMINAL_PHASES and current.get("jobName") == job["metadata"]["name"]:
            return  # finished results are final
        pods = await self._call(
            self.kube.list_job_pods, job["metadata"]["namespace"], job["metadata"]["name"]
        )
        spec_suspend = bool((body.get("spec") or {}).get("suspend"))
        update = status.map_job_status(
            current, job, pods, generation=body["metadata"].get("generation"), spec_suspend=spec_suspend
        )
        if not current.get("conditions") or not any(
            c.get("type") == "JobCreated" for c in current["conditions"]
        ):
            update.patch["conditions"] = status.set_condition(
                update.patch["conditions"],
                "JobCreated",
                True,
                "JobCreated",
                f"Job {job['metadata']['name']} exists",
                generation=body["metadata"].get("generation"),
                now=status.now_iso(),
            )
        await self._apply(body, current, update)

    # ---- suspend / delete ------------------------------------------------------------------------
    async def sync_suspend(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        async with self.lock(meta["uid"]):
            fresh = await self._fresh(body)
            if fresh is None:
                return
            job = await self.find_job(fresh)
            if job is None or (fresh.get("status") or {}).get("phase") in TERMINAL_PHASES:
                return
            spec = fresh.get("spec") or {}
            want = bool(spec.get("suspend"))
            have = bool((job.get("spec") or {}).get("suspend"))
            if want == have:
                return
            if not want and spec.get("queueName"):
                return  # Kueue owns unsuspending (admission); never rewrite it
            await self._call(
                self.kube.patch_job, meta["namespace"], job["metadata"]["name"], {"spec": {"suspend": want}}
            )
            self.emit(
                fresh,
                "Normal",
                "Suspended" if want else "Resumed",
                f"Job {job['metadata']['name']} {'suspended' if want else 'resumed'}",
            )

    async def cleanup(self, body: dict[str, Any]) -> None:
        """Delete the experiment's Job (ownerReferences do it too where a GC runs)."""
        meta = body["metadata"]
        found = await self._call(self.kube.list_jobs, meta["namespace"], {jobs.LABEL_UID: meta["uid"]})
        for job in found:
            await self._call(self.kube.delete_job, meta["namespace"], job["metadata"]["name"])
        self._locks.pop(meta["uid"], None)


def _controller(job: dict[str, Any]) -> dict[str, Any] | None:
    for ref in job["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "SparsifyExperiment":
            return ref
    return None


def _owned_by(job: dict[str, Any], uid: str) -> bool:
    owner = _controller(job)
    return owner is not None and owner.get("uid") == uid
