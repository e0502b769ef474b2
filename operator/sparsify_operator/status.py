"""Job/Pod state + the runner's termination message -> the experiment's status. Pure.

Use it without a cluster (tests, the runner-I/O end-to-end test)::

    from sparsify_operator.status import map_job_status
    update = map_job_status(current_status={}, job=job_dict, pods=[pod_dict], generation=1,
                            spec_suspend=False, now="2026-01-01T00:00:00Z")
    update.patch   # {"phase": "Succeeded", "results": {...}, "conditions": [...], ...}
    update.events  # [("Normal", "Succeeded", "...")]: Kubernetes Events to emit

A pod dict needs only ``status.containerStatuses[].state.terminated.message`` (the JSON
``RunSummary`` the runner writes to ``/dev/termination-log``) to carry results; e.g. build
one with ``pod_with_termination_message(message, exit_code)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sparsify_runner.contract import RunSummary

from .jobs import CONTAINER
from .models import TERMINAL_PHASES, Results

MESSAGE_LINES = 5
MESSAGE_LIMIT = 1024


def now_iso() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StatusUpdate:
    patch: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def phase(self) -> str | None:
        return self.patch.get("phase")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """Upsert a condition; ``lastTransitionTime`` changes only when the status flips."""
    out = [dict(c) for c in (conditions or []) if c.get("type") != type_]
    previous = next((c for c in (conditions or []) if c.get("type") == type_), None)
    value = "True" if status else "False"
    cond = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "lastTransitionTime": previous["lastTransitionTime"]
        if previous and previous.get("status") == value and previous.get("lastTransitionTime")
        else now,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return out


def _transition(current: dict[str, Any], patch: dict[str, Any], etype: str) -> list[tuple[str, str, str]]:
    if current.get("phase") == patch.get("phase") and current.get("reason") == patch.get("reason"):
        return []
    return [(etype, patch.get("reason") or patch["phase"], patch.get("message") or patch["phase"])]


def invalid_spec(
    current: dict[str, Any], field_path: str, message: str, *, generation: int | None, now: str
) -> StatusUpdate:
    """A spec the operator cannot run: Failed + InvalidSpec, no Job."""
    text = f"{field_path}: {message}" if not message.startswith(field_path) else message
    conds = set_condition(
        current.get("conditions"), "InvalidSpec", True, "InvalidSpec", text, generation=generation, now=now
    )
    conds = set_condition(conds, "Failed", True, "InvalidSpec", text, generation=generation, now=now)
    patch = {
        "phase": "Failed",
        "reason": "InvalidSpec",
        "message": text,
        "conditions": conds,
        "observedGeneration": generation,
        "completionTime": now,
    }
    return StatusUpdate(patch, _transition(current, patch, "Warning"))


def job_create_failed(
    current: dict[str, Any], job_name: str, message: str, *, generation: int | None, now: str, permanent: bool
) -> StatusUpdate:
    """The API refused the Job: permanent (422/403: Failed) or retried (Pending)."""
    conds = set_condition(
        current.get("conditions"),
        "JobCreated",
        False,
        "JobCreateFailed",
        message,
        generation=generation,
        now=now,
    )
    phase = "Failed" if permanent else "Pending"
    if permanent:
        conds = set_condition(
            conds, "Failed", True, "JobCreateFailed", message, generation=generation, now=now
        )
    patch = {
        "phase": phase,
        "reason": "JobCreateFailed",
        "message": message[:MESSAGE_LIMIT],
        "conditions": conds,
        "observedGeneration": generation,
        "jobName": job_name,
    }
    return StatusUpdate(patch, _transition(current, patch, "Warning"))


def job_created(
    current: dict[str, Any], job_name: str, *, suspended: bool, queued: bool, generation: int | None, now: str
) -> StatusUpdate:
    conds = set_condition(
        current.get("conditions"),
        "JobCreated",
        True,
        "JobCreated",
        f"created Job {job_name}",
        generation=generation,
        now=now,
    )
    if suspended:
        phase, reason, message = "Suspended", "Suspended", f"Job {job_name} is suspended (spec.suspend)"
    elif queued:
        phase, reason, message = "Pending", "Queued", f"Job {job_name} waits for Kueue admission"
    else:
        phase, reason, message = "Pending", "JobCreated", f"created Job {job_name}"
    patch = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "conditions": conds,
        "observedGeneration": generation,
        "jobName": job_name,
        "attempts": 0,
    }
    return StatusUpdate(patch, [("Normal", "JobCreated", f"created Job {job_name}")])


def job_deleted(current: dict[str, Any], job_name: str, *, generation: int | None, now: str) -> StatusUpdate:
    """The Job vanished before finishing: report it; never silently recreate."""
    message = (
        f"Job {job_name} was deleted before it finished; delete and re-create the experiment to run it again"
    )
    conds = set_condition(
        current.get("conditions"), "Failed", True, "JobDeleted", message, generation=generation, now=now
    )
    conds = set_condition(conds, "Running", False, "JobDeleted", message, generation=generation, now=now)
    patch = {
        "phase": "Failed",
        "reason": "JobDeleted",
        "message": message,
        "conditions": conds,
        "completionTime": now,
    }
    return StatusUpdate(patch, _transition(current, patch, "Warning"))


# ---- Job/Pod -> phase ----------------------------------------------------------------------


def _true_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    }


def _runner_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else None


def _creation(pod: dict[str, Any]) -> str:
    return (pod.get("metadata") or {}).get("creationTimestamp") or ""


def termination(pods: list[dict[str, Any]]) -> tuple[str | None, int | None]:
    """(message, exit code) of the most recent terminated runner container."""
    for pod in sorted(pods, key=_creation, reverse=True):
        cs = _runner_status(pod)
        if not cs:
            continue
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated")
            if term:
                return term.get("message"), term.get("exitCode")
    return None, None


def _waiting_reason(pods: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    for pod in sorted(pods, key=_creation, reverse=True):
        cs = _runner_status(pod)
        waiting = ((cs or {}).get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return waiting.get("reason"), waiting.get("message")
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return cond.get("reason") or "Unschedulable", cond.get("message")
    return None, None


def _tail(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return "\n".join(lines[-MESSAGE_LINES:])[-MESSAGE_LIMIT:]


def results_from(summary: RunSummary) -> dict[str, Any]:
    results = Results.model_validate(summary.model_dump(include=set(Results.model_fields)))
    return results.model_dump(by_alias=True, exclude_none=True)


def map_job_status(
    current_status: dict[str, Any] | None,
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    *,
    generation: int | None,
    spec_suspend: bool,
    now: str | None = None,
) -> StatusUpdate:
    """The experiment status that the Job and its pods imply (a merge patch for ``status``)."""
    current = dict(current_status or {})
    now = now or now_iso()
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    conds = _true_conditions(job)
    job_name = (job.get("metadata") or {}).get("name")
    message, exit_code = termination(pods)
    summary = RunSummary.from_message(message)

    patch: dict[str, Any] = {"jobName": job_name}
    attempts = sum(int(status.get(k) or 0) for k in ("active", "succeeded", "failed"))
    patch["attempts"] = max(attempts, int(current.get("attempts") or 0))
    if status.get("startTime"):
        patch["startTime"] = status["startTime"]

    if "Complete" in conds or "SuccessCriteriaMet" in conds:
        patch["phase"] = "Succeeded"
        patch["reason"] = "Succeeded"
        if summary is not None:
            patch["results"] = results_from(summary)
            patch["message"] = f"model at {summary.model_uri}" if summary.model_uri else "finished"
            if summary.speedup is not None:
                patch["message"] += f"; speedup {summary.speedup:.2f}x"
        else:
            patch["message"] = "finished (no termination message from the runner)"
        patch["completionTime"] = (
            status.get("completionTime") or conds.get("Complete", {}).get("lastTransitionTime") or now
        )
    elif "Failed" in conds or "FailureTarget" in conds:
        cond = conds.get("Failed") or conds["FailureTarget"]
        patch["phase"] = "Failed"
        if summary is not None and summary.status == "failed":
            patch["reason"] = summary.reason or cond.get("reason") or "Failed"
            patch["message"] = (summary.error or cond.get("message") or "")[:MESSAGE_LIMIT]
        else:
            patch["reason"] = cond.get("reason") or "Failed"
            detail = _tail(message) or cond.get("message") or "the Job failed"
            code = f" (exit code {exit_code})" if exit_code is not None else ""
            patch["message"] = f"{detail}{code}"[:MESSAGE_LIMIT]
        patch["completionTime"] = cond.get("lastTransitionTime") or now
    elif spec.get("suspend"):
        if spec_suspend:
            patch.update(phase="Suspended", reason="Suspended", message=f"Job {job_name} is suspended")
        else:
            patch.update(phase="Pending", reason="Queued", message=f"Job {job_name} waits for admission")
    elif int(status.get("ready") or 0) > 0 or _any_running(pods):
        patch.update(phase="Running", reason="Running", message=f"Job {job_name} is running")
    else:
        reason, detail = _waiting_reason(pods)
        if reason:
            patch.update(phase="Pending", reason=reason, message=(detail or reason)[:MESSAGE_LIMIT])
        else:
            patch.update(phase="Pending", reason="Starting", message=f"Job {job_name} is starting")

    phase = patch["phase"]
    conditions = current.get("conditions")
    conditions = set_condition(
        conditions,
        "Running",
        phase == "Running",
        patch["reason"],
        patch["message"],
        generation=generation,
        now=now,
    )
    if phase == "Suspended" or any(c.get("type") == "Suspended" for c in conditions):
        conditions = set_condition(
            conditions,
            "Suspended",
            phase == "Suspended",
            patch["reason"],
            patch["message"],
            generation=generation,
            now=now,
        )
    if phase in TERMINAL_PHASES:
        conditions = set_condition(
            conditions, phase, True, patch["reason"], patch["message"], generation=generation, now=now
        )
    patch["conditions"] = conditions
    patch["observedGeneration"] = generation
    etype = "Warning" if phase == "Failed" else "Normal"
    return StatusUpdate(patch, _transition(current, patch, etype))


def _any_running(pods: list[dict[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def pod_with_termination_message(message: str, exit_code: int, *, name: str = "runner-pod") -> dict[str, Any]:
    """A minimal Pod dict whose runner container terminated with ``message`` (for tests/tools)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "creationTimestamp": now_iso()},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": CONTAINER,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "message": message,
                            "reason": "Completed" if exit_code == 0 else "Error",
                        }
                    },
                }
            ],
        },
    }
