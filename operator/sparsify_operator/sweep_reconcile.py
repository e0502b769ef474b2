"""The sweep fan-out as pure functions: (sweep, its child experiments) -> what to create + status.

``plan`` never lets more than ``parallelism`` children be pending or running at once, never
asks for a child that exists already (names are deterministic), and keeps a finished
point's result even if its child experiment was deleted later. The aggregation (phase,
best point, Pareto fronts) is the runner's, shared with ``sparsifyctl sweep``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sparsify_runner.sweep import SweepPoint, aggregate, grid

from . import status as status_mod
from .jobs import KUEUE_QUEUE_LABEL, label_value
from .models import API_VERSION, KIND, TERMINAL_PHASES, ConditionType, EventType, Phase
from .sweep_models import LABEL_SWEEP, SWEEP_KIND, SparsifySweepSpec, SweepReason


@dataclass
class SweepPlan:
    create: list[dict[str, Any]] = field(default_factory=list)  # child manifests to create now
    status: dict[str, Any] = field(default_factory=dict)  # the sweep's new status
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def points_of(sweep: dict[str, Any]) -> list[SweepPoint]:
    """The grid of a valid sweep: child names ``<sweep>-<level as 020>-<u|c>``."""
    spec = SparsifySweepSpec.model_validate(sweep.get("spec") or {})
    return grid(sweep["metadata"]["name"], spec.optim_levels, spec.grid_structures())


def child_manifest(sweep: dict[str, Any], point: SweepPoint) -> dict[str, Any]:
    """The child SparsifyExperiment of one point: the template with this point's optim
    level/structure, its own output, owned by the sweep (controller, blockOwnerDeletion),
    labelled with the sweep and (when set) the Kueue queue it inherits."""
    meta = sweep["metadata"]
    spec = copy.deepcopy((sweep.get("spec") or {}).get("template") or {})
    exp = spec.setdefault("experiment", {})
    exp["optimLevel"] = point.optim_level
    exp["structure"] = point.structure
    exp["name"] = point.name
    exp["output"] = str(exp.get("output") or ".").rstrip("/") + "/" + point.name
    labels = {LABEL_SWEEP: label_value(meta["name"])}
    if spec.get("queueName"):
        labels[KUEUE_QUEUE_LABEL] = spec["queueName"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": point.name,
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": sweep.get("apiVersion") or API_VERSION,
                    "kind": SWEEP_KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def owned_by(child: dict[str, Any], sweep_uid: str) -> bool:
    return any(
        ref.get("controller") and ref.get("kind") == SWEEP_KIND and ref.get("uid") == sweep_uid
        for ref in child["metadata"].get("ownerReferences") or []
    )


def _point_from_child(point: SweepPoint, child: dict[str, Any]) -> SweepPoint:
    st = child.get("status") or {}
    phase = st.get("phase") or Phase.PENDING.value
    point = point.model_copy(update={"phase": phase})
    if phase == Phase.FAILED:
        reason = st.get("reason") or Phase.FAILED.value
        point = point.model_copy(update={"message": f"{reason}: {st.get('message') or ''}".strip(": ")})
    return point.with_results(st.get("results"))


def plan(sweep: dict[str, Any], children: list[dict[str, Any]]) -> SweepPlan:
    """Children to create now and the sweep's aggregated status."""
    meta = sweep["metadata"]
    current = sweep.get("status") or {}
    generation = meta.get("generation")
    now = status_mod.now_iso()
    try:
        spec = SparsifySweepSpec.model_validate(sweep.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(["spec", *(str(p) for p in first["loc"])])
        message = f"invalid field '{where}': {first['msg'].removeprefix('Value error, ')}"
        st = {
            "phase": Phase.FAILED,
            "reason": SweepReason.INVALID_SPEC,
            "message": message,
            "observedGeneration": generation,
            "conditions": status_mod.set_condition(
                current.get("conditions"), ConditionType.COMPLETE, True, SweepReason.INVALID_SPEC, message,
                generation=generation, now=now,
            ),
        }
        events = (
            []
            if current.get("reason") == SweepReason.INVALID_SPEC
            else [(EventType.WARNING, SweepReason.INVALID_SPEC, message)]
        )
        return SweepPlan(status=st, events=events)

    points = grid(meta["name"], spec.optim_levels, spec.grid_structures())
    by_name = {c["metadata"]["name"]: c for c in children}
    recorded = {p.get("name"): p for p in current.get("points") or []}
    resolved: list[SweepPoint] = []
    missing: list[SweepPoint] = []
    active = 0
    for point in points:
        child = by_name.get(point.name)
        if child is not None and not owned_by(child, meta["uid"]):
            resolved.append(
                point.model_copy(
                    update={
                        "phase": Phase.FAILED.value,
                        "message": f"an experiment named {point.name} exists and is not owned by this sweep",
                    }
                )
            )
        elif child is not None:
            p = _point_from_child(point, child)
            active += p.phase not in TERMINAL_PHASES
            resolved.append(p)
        elif (recorded.get(point.name) or {}).get("phase") in TERMINAL_PHASES:
            resolved.append(SweepPoint.model_validate(recorded[point.name]))  # finished results are final
        else:
            missing.append(point)
            resolved.append(point)
    create = [child_manifest(sweep, p) for p in missing[: max(0, spec.parallelism - active)]]

    result = aggregate(resolved, spec.objective)
    st = result.to_wire()
    st.pop("objective", None)
    st.setdefault("best", None)  # a merge patch with null clears a stale best
    finished = result.phase in TERMINAL_PHASES
    some_failed = "failed" in result.summary
    reason = {
        Phase.SUCCEEDED: SweepReason.SOME_FAILED if some_failed else SweepReason.ALL_SUCCEEDED,
        Phase.FAILED: SweepReason.ALL_FAILED,
    }.get(result.phase, result.phase)
    st.update(
        {
            "reason": reason,
            "message": result.summary,
            "observedGeneration": generation,
            "conditions": status_mod.set_condition(
                current.get("conditions"), ConditionType.COMPLETE, finished, reason, result.summary,
                generation=generation, now=now,
            ),
        }
    )
    events: list[tuple[str, str, str]] = [
        (EventType.NORMAL, SweepReason.CHILD_CREATED, f"creating experiment {m['metadata']['name']}")
        for m in create
    ]
    if finished and current.get("phase") != result.phase:
        best = result.best.name if result.best and result.best.name else "none"
        etype = EventType.NORMAL if result.phase == Phase.SUCCEEDED else EventType.WARNING
        events.append((etype, reason, f"{result.summary}; best: {best}"))
    return SweepPlan(create=create, status=st, events=events)
