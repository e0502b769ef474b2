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

A JobSet (``spec.nodes`` > 1) goes through the same mapping: ``job_observed`` reads it as a Job
(``jobset_as_job``: Completed -> Complete, Failed -> Failed, Suspended -> ``spec.suspend``) and
takes the results from node rank 0's pods (``leader_pods``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sparsify_runner.contract import RunSummary

from .jobs import CONTAINER
from .jobset import KIND as JOBSET_KIND
from .jobset import completion_index
from .models import TERMINAL_PHASES, ConditionType, EventType, Phase, Reason, Results

MESSAGE_LINES = 5
MESSAGE_LIMIT = 1024


class JobCondition(StrEnum):
    """The batch/v1 Job's own condition types that decide the experiment's phase."""

    COMPLETE = "Complete"
    SUCCESS_CRITERIA_MET = "SuccessCriteriaMet"
    FAILED = "Failed"
    FAILURE_TARGET = "FailureTarget"


class JobSetCondition(StrEnum):
    """The JobSet's condition types that decide the experiment's phase (``spec.nodes`` > 1)."""

    COMPLETED = "Completed"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


# A runner container waiting for one of these is just starting, not stuck.
STARTING_WAIT_REASONS = ("ContainerCreating", "PodInitializing")


def now_iso() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StatusUpdate:
    patch: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def phase(self) -> str | None:
        return self.patch.get("phase")

    def changes(self, current: dict[str, Any]) -> dict[str, Any]:
        """The merge patch that moves ``current`` to this update: the fields that differ (None
        means "leave as is" here, not "clear"). Empty when ``current`` is already there."""
        return {k: v for k, v in self.patch.items() if v is not None and current.get(k) != v}


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
    """Upsert a condition in place (a new type goes last, as ``meta.SetStatusCondition`` does,
    so setting the same conditions again gives the same list); ``lastTransitionTime`` changes
    only when the status flips."""
    out = [dict(c) for c in conditions or []]
    at = next((i for i, c in enumerate(out) if c.get("type") == type_), None)
    previous = out[at] if at is not None else None
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
    if at is None:
        return [*out, cond]
    out[at] = cond
    return [c for i, c in enumerate(out) if i <= at or c.get("type") != type_]


def set_conditions(
    conditions: list[dict[str, Any]] | None,
    updates: list[tuple[ConditionType, bool]],
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """``set_condition`` for each (type, status) of ``updates``, all with one reason and message."""
    for type_, value in updates:
        conditions = set_condition(conditions, type_, value, reason, message, generation=generation, now=now)
    return conditions or []


def has_condition(current: dict[str, Any], type_: str, status: bool | None = True) -> bool:
    """Whether ``current`` (a status) has the condition with that status (None: any status)."""
    value = {True: "True", False: "False", None: None}[status]
    return any(
        c.get("type") == type_ and value in (None, c.get("status")) for c in current.get("conditions") or []
    )


def job_was_created(current: dict[str, Any]) -> bool:
    """The status records a Job that existed (not merely a Job name a failed create tried)."""
    return bool(current.get("jobName")) and has_condition(current, ConditionType.JOB_CREATED)


def _transition(current: dict[str, Any], patch: dict[str, Any], etype: str) -> list[tuple[str, str, str]]:
    if current.get("phase") == patch.get("phase") and current.get("reason") == patch.get("reason"):
        return []
    return [(etype, patch.get("reason") or patch["phase"], patch.get("message") or patch["phase"])]


def _failure(
    current: dict[str, Any],
    phase: Phase,
    reason: Reason,
    message: str,
    conditions: list[tuple[ConditionType, bool]],
    generation: int | None,
    now: str,
    fields: dict[str, Any],
) -> StatusUpdate:
    """A status that reports a problem (a Warning Event on the transition): ``conditions``
    (type, status) all carry ``reason`` and ``message``; ``fields`` are more status fields."""
    conds = set_conditions(
        current.get("conditions"), conditions, reason, message, generation=generation, now=now
    )
    patch = {"phase": phase, "reason": reason, "message": message, "conditions": conds, **fields}
    return StatusUpdate(patch, _transition(current, patch, EventType.WARNING))


def invalid_spec(
    current: dict[str, Any], field_path: str, message: str, *, generation: int | None, now: str
) -> StatusUpdate:
    """A spec the operator cannot run: Failed + InvalidSpec, no Job."""
    text = f"{field_path}: {message}" if not message.startswith(field_path) else message
    conds = [(ConditionType.INVALID_SPEC, True), (ConditionType.FAILED, True)]
    fields = {"observedGeneration": generation, "completionTime": now}
    return _failure(current, Phase.FAILED, Reason.INVALID_SPEC, text, conds, generation, now, fields)


def job_create_failed(
    current: dict[str, Any], job_name: str, message: str, *, generation: int | None, now: str, permanent: bool
) -> StatusUpdate:
    """The API refused the Job: permanent (422/403: Failed) or retried (Pending)."""
    phase = Phase.FAILED if permanent else Phase.PENDING
    conds = [(ConditionType.JOB_CREATED, False), *([(ConditionType.FAILED, True)] if permanent else [])]
    fields = {"observedGeneration": generation, "jobName": job_name}
    message = message[:MESSAGE_LIMIT]
    return _failure(current, phase, Reason.JOB_CREATE_FAILED, message, conds, generation, now, fields)


def job_created(
    current: dict[str, Any],
    job_name: str,
    *,
    suspended: bool,
    queued: bool,
    generation: int | None,
    now: str,
    noun: str = "Job",
) -> StatusUpdate:
    """The status right after the operator created its Job (``noun``: or its JobSet)."""
    conds = set_condition(
        current.get("conditions"),
        ConditionType.JOB_CREATED,
        True,
        Reason.JOB_CREATED,
        f"created {noun} {job_name}",
        generation=generation,
        now=now,
    )
    if suspended:
        phase, reason = Phase.SUSPENDED, Reason.SUSPENDED
        message = f"{noun} {job_name} is suspended (spec.suspend)"
    elif queued:
        phase, reason, message = Phase.PENDING, Reason.QUEUED, f"{noun} {job_name} waits for Kueue admission"
    else:
        phase, reason, message = Phase.PENDING, Reason.JOB_CREATED, f"created {noun} {job_name}"
    patch = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "conditions": conds,
        "observedGeneration": generation,
        "jobName": job_name,
        "attempts": 0,
    }
    return StatusUpdate(patch, [(EventType.NORMAL, Reason.JOB_CREATED, f"created {noun} {job_name}")])


def job_deleted(
    current: dict[str, Any], job_name: str, *, generation: int | None, now: str, noun: str = "Job"
) -> StatusUpdate:
    """The Job (or JobSet) vanished before it finished: report it; never silently recreate."""
    message = (
        f"{noun} {job_name} was deleted before it finished; "
        "delete and re-create the experiment to run it again"
    )
    conds = [(ConditionType.FAILED, True), (ConditionType.RUNNING, False)]
    fields = {"completionTime": now}
    return _failure(current, Phase.FAILED, Reason.JOB_DELETED, message, conds, generation, now, fields)


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
        if waiting and waiting.get("reason") not in (None, *STARTING_WAIT_REASONS):
            return waiting.get("reason"), waiting.get("message")
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return cond.get("reason") or Reason.UNSCHEDULABLE, cond.get("message")
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
    noun: str = "Job",
) -> StatusUpdate:
    """The experiment status that the Job and its pods imply (a merge patch for ``status``);
    ``noun`` names the child in messages (a JobSet goes through ``jobset_as_job`` first)."""
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

    if JobCondition.COMPLETE in conds or JobCondition.SUCCESS_CRITERIA_MET in conds:
        patch["phase"] = Phase.SUCCEEDED
        patch["reason"] = Reason.SUCCEEDED
        if summary is not None:
            patch["results"] = results_from(summary)
            patch["message"] = f"model at {summary.model_uri}" if summary.model_uri else "finished"
            if summary.speedup is not None:
                patch["message"] += f"; speedup {summary.speedup:.2f}x"
        else:
            patch["message"] = "finished (no termination message from the runner)"
        patch["completionTime"] = (
            status.get("completionTime")
            or conds.get(JobCondition.COMPLETE, {}).get("lastTransitionTime")
            or now
        )
    elif JobCondition.FAILED in conds or JobCondition.FAILURE_TARGET in conds:
        cond = conds.get(JobCondition.FAILED) or conds[JobCondition.FAILURE_TARGET]
        patch["phase"] = Phase.FAILED
        if summary is not None and summary.status == "failed":
            patch["reason"] = summary.reason or cond.get("reason") or Reason.FAILED
            patch["message"] = (summary.error or cond.get("message") or "")[:MESSAGE_LIMIT]
        else:
            patch["reason"] = cond.get("reason") or Reason.FAILED
            detail = _tail(message) or cond.get("message") or "the Job failed"
            code = f" (exit code {exit_code})" if exit_code is not None else ""
            patch["message"] = f"{detail}{code}"[:MESSAGE_LIMIT]
        patch["completionTime"] = cond.get("lastTransitionTime") or now
    elif spec.get("suspend"):
        if spec_suspend:
            patch.update(
                phase=Phase.SUSPENDED, reason=Reason.SUSPENDED, message=f"{noun} {job_name} is suspended"
            )
        else:
            patch.update(
                phase=Phase.PENDING, reason=Reason.QUEUED, message=f"{noun} {job_name} waits for admission"
            )
    elif int(status.get("ready") or 0) > 0 or _any_running(pods):
        patch.update(phase=Phase.RUNNING, reason=Reason.RUNNING, message=f"{noun} {job_name} is running")
    else:
        reason, detail = _waiting_reason(pods)
        if reason:
            patch.update(phase=Phase.PENDING, reason=reason, message=(detail or reason)[:MESSAGE_LIMIT])
        else:
            patch.update(
                phase=Phase.PENDING, reason=Reason.STARTING, message=f"{noun} {job_name} is starting"
            )

    phase = patch["phase"]
    updates = [(ConditionType.RUNNING, phase == Phase.RUNNING)]
    if phase == Phase.SUSPENDED or has_condition(current, ConditionType.SUSPENDED, None):
        updates.append((ConditionType.SUSPENDED, phase == Phase.SUSPENDED))
    if phase in TERMINAL_PHASES:
        updates.append((ConditionType(phase), True))
    conditions = set_conditions(
        current.get("conditions"), updates, patch["reason"], patch["message"], generation=generation, now=now
    )
    patch["conditions"] = conditions
    patch["observedGeneration"] = generation
    etype = EventType.WARNING if phase == Phase.FAILED else EventType.NORMAL
    return StatusUpdate(patch, _transition(current, patch, etype))


def is_jobset(child: dict[str, Any]) -> bool:
    return child.get("kind") == JOBSET_KIND


def child_noun(child: dict[str, Any]) -> str:
    return JOBSET_KIND if is_jobset(child) else "Job"


def jobset_as_job(jobset: dict[str, Any]) -> dict[str, Any]:
    """A JobSet seen as the one Job ``map_job_status`` reads: its Completed/Failed conditions
    become Complete/Failed, Suspended (condition or ``spec.suspend``) becomes ``spec.suspend``,
    and the counts say whether a run is active and how many restarts (attempts) there were."""
    status = jobset.get("status") or {}
    conds = _true_conditions(jobset)
    as_job = {JobSetCondition.COMPLETED: JobCondition.COMPLETE, JobSetCondition.FAILED: JobCondition.FAILED}
    job_conditions = [{**c, "type": as_job[t]} for t, c in conds.items() if t in as_job]
    replicated = status.get("replicatedJobsStatus") or []
    finished = bool(job_conditions)
    active = sum(int(r.get("active") or 0) for r in replicated)
    suspended = bool((jobset.get("spec") or {}).get("suspend")) or JobSetCondition.SUSPENDED in conds
    restarts = int(status.get("restarts") or 0)
    return {
        "metadata": {"name": (jobset.get("metadata") or {}).get("name")},
        "spec": {"suspend": suspended and not finished},
        "status": {
            "conditions": job_conditions,
            "active": 1 if active and not finished else 0,
            "ready": sum(int(r.get("ready") or 0) for r in replicated),
            "failed": restarts + (1 if JobSetCondition.FAILED in conds else 0),
            "succeeded": 1 if JobSetCondition.COMPLETED in conds else 0,
        },
    }


def leader_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods of node rank 0 (completion index 0), whose rank 0 writes the run's termination
    message; all pods when none says its index."""
    leaders = [p for p in pods if completion_index(p) == "0"]
    return leaders or pods


def job_observed(
    experiment: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]], now: str
) -> StatusUpdate:
    """``map_job_status`` for the experiment's own Job or JobSet (``kind``), recording that it
    exists (the JobCreated condition) when an earlier status does not say so yet (e.g. the
    operator restarted between creating it and patching the status)."""
    current = experiment.get("status") or {}
    generation = experiment["metadata"].get("generation")
    spec_suspend = bool((experiment.get("spec") or {}).get("suspend"))
    noun = child_noun(job)
    if is_jobset(job):
        job, pods = jobset_as_job(job), leader_pods(pods)
    update = map_job_status(
        current, job, pods, generation=generation, spec_suspend=spec_suspend, now=now, noun=noun
    )
    if not has_condition(current, ConditionType.JOB_CREATED, None):
        update.patch["conditions"] = set_condition(
            update.patch["conditions"],
            ConditionType.JOB_CREATED,
            True,
            Reason.JOB_CREATED,
            f"{noun} {job['metadata']['name']} exists",
            generation=generation,
            now=now,
        )
    return update


def job_started(experiment: dict[str, Any], job: dict[str, Any], now: str) -> StatusUpdate:
    """The status right after the operator created ``job`` (a Job or a JobSet): JobCreated (its
    Event), then what the new child already says (starting, queued or suspended), so that one
    write converges."""
    spec = experiment.get("spec") or {}
    current = experiment.get("status") or {}
    created = job_created(
        current,
        job["metadata"]["name"],
        suspended=bool(spec.get("suspend")),
        queued=bool(spec.get("queueName")),
        generation=experiment["metadata"].get("generation"),
        now=now,
        noun=child_noun(job),
    )
    observed = job_observed({**experiment, "status": {**current, **created.patch}}, job, [], now)
    return StatusUpdate({**created.patch, **observed.patch}, [*created.events, *observed.events])


def jobset_not_installed(
    current: dict[str, Any], nodes: int, *, generation: int | None, now: str
) -> StatusUpdate:
    """``spec.nodes`` > 1 where the API server does not serve JobSets: Failed, no child."""
    message = (
        f"spec.nodes: {nodes} nodes run as a JobSet, and this cluster does not serve "
        "jobset.x-k8s.io/v1alpha2 jobsets; install JobSet (https://jobset.sigs.k8s.io) and re-create "
        "the experiment, or set spec.nodes: 1"
    )
    conds = [(ConditionType.JOB_CREATED, False), (ConditionType.FAILED, True)]
    fields = {"observedGeneration": generation, "completionTime": now}
    return _failure(
        current, Phase.FAILED, Reason.JOBSET_NOT_INSTALLED, message, conds, generation, now, fields
    )


def _any_running(pods: list[dict[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)  # the Pod's phase


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
