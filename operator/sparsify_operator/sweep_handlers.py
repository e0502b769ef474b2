"""Thin kopf handlers for ``SparsifySweep``: re-plan on every relevant change, create the
missing children, patch the sweep's status. The logic is ``sweep_reconcile.plan``.

Re-planning is triggered by the sweep itself (create/resume, and a slow timer as a safety
net) and by every event of a child experiment (label ``sparsify.dev/sweep``): a child
finishing frees a slot for the next point. Each sweep is re-planned under its own lock
(namespace/name), so concurrent events never create a child twice; a 409 on create means
"already there".
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import metrics
from .handlers import _emit
from .jobs import label_value
from .kube import ApiError, Kube
from .models import GROUP, PLURAL, VERSION
from .sweep_models import LABEL_SWEEP, SWEEP_KIND, SWEEP_PLURAL
from .sweep_reconcile import owned_by, plan

log = logging.getLogger("sparsify_operator.sweeps")

TIMER_INTERVAL_S = 60.0


def _kube(memo: kopf.Memo) -> Kube:
    return memo.reconciler.kube


def _lock(memo: kopf.Memo, key: str) -> asyncio.Lock:
    locks = memo.setdefault("sweep_locks", {})
    return locks.setdefault(key, asyncio.Lock())


async def _children(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    # Labelled experiments that are not ours (leftovers of an older sweep of the same name)
    # are kept: plan() reports the name clash instead of creating a duplicate.
    return await asyncio.to_thread(kube.list_experiments_by_label, ns, {LABEL_SWEEP: label_value(name)})


async def sync_sweep(kube: Kube, memo: kopf.Memo, ns: str, name: str, uid: str | None = None) -> None:
    """Converge one sweep: read it fresh, plan, create, patch status (idempotent)."""
    async with _lock(memo, f"{ns}/{name}"):
        try:
            sweep = await asyncio.to_thread(kube.get_sweep, ns, name)
        except ApiError as err:
            if err.status == 404:
                return
            raise
        meta = sweep["metadata"]
        if (uid and meta.get("uid") != uid) or meta.get("deletionTimestamp"):
            return
        children = await _children(kube, ns, name)
        # A clash with an unlabelled experiment of a child's name shows up as a 409 below.
        result = plan(sweep, children)
        for manifest in result.create:
            child = manifest["metadata"]["name"]
            try:
                await asyncio.to_thread(kube.create_experiment, ns, manifest)
                log.info("created experiment %s/%s for sweep %s", ns, child, name)
            except ApiError as err:
                if err.status != 409:
                    raise
                existing = await asyncio.to_thread(kube.get_experiment, ns, child)
                if not owned_by(existing, meta["uid"]):
                    children.append(existing)
        if any(not owned_by(c, meta["uid"]) for c in children):
            result = plan(sweep, children)
        current = sweep.get("status") or {}
        patch = {k: v for k, v in result.status.items() if current.get(k) != v}
        if patch:
            await asyncio.to_thread(kube.patch_sweep_status, ns, name, patch)
        for etype, reason, message in result.events:
            _emit(sweep, etype, reason, message)


@kopf.on.resume(GROUP, VERSION, SWEEP_PLURAL, id="sweep-plan")
@kopf.on.create(GROUP, VERSION, SWEEP_PLURAL, id="sweep-plan")
async def sweep_plan(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with metrics.timed("sweep-plan"):
        meta = body["metadata"]
        await sync_sweep(_kube(memo), memo, meta["namespace"], meta["name"], meta.get("uid"))


@kopf.timer(GROUP, VERSION, SWEEP_PLURAL, interval=TIMER_INTERVAL_S, initial_delay=TIMER_INTERVAL_S,
            id="sweep-resync")
async def sweep_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return
    meta = body["metadata"]
    await sync_sweep(_kube(memo), memo, meta["namespace"], meta["name"], meta.get("uid"))


@kopf.on.event(GROUP, VERSION, PLURAL, labels={LABEL_SWEEP: kopf.PRESENT}, id="sweep-child")
async def sweep_child(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    obj = event["object"]
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == SWEEP_KIND:
            with metrics.timed("sweep-child"):
                await sync_sweep(_kube(memo), memo, obj["metadata"]["namespace"], ref["name"], ref.get("uid"))


@kopf.on.delete(GROUP, VERSION, SWEEP_PLURAL, id="sweep-cleanup")
async def sweep_cleanup(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Delete the children (the garbage collector does it too, through ownerReferences)."""
    kube = _kube(memo)
    meta = body["metadata"]
    for child in await _children(kube, meta["namespace"], meta["name"]):
        if not owned_by(child, meta["uid"]):
            continue
        try:
            await asyncio.to_thread(kube.delete_experiment, meta["namespace"], child["metadata"]["name"])
        except ApiError as err:
            if err.status != 404:
                raise
    memo.setdefault("sweep_locks", {}).pop(f"{meta['namespace']}/{meta['name']}", None)
