"""Job/Pod state + termination message -> experiment status (pure)."""

from __future__ import annotations

from sparsify_operator import status
from sparsify_runner.contract import RunSummary

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T01:00:00Z"


def _job(conditions=(), suspend=False, **st):
    return {
        "metadata": {"name": "e-sparsify"},
        "spec": {"suspend": suspend},
        "status": {**st, "conditions": list(conditions)},
    }


def _cond(type_, reason="", message=""):
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": NOW}


def _map(job, pods=(), current=None, suspend=False, now=NOW):
    return status.map_job_status(current or {}, job, list(pods), generation=3, spec_suspend=suspend, now=now)


def test_succeeded_with_results_from_termination_message():
    msg = RunSummary(
        status="succeeded",
        model_uri="s3://o/model.onnx",
        report_uri="s3://o/report.json",
        baseline_accuracy=0.9,
        optimized_accuracy=0.89,
        speedup=1.8,
        baseline_size_bytes=100,
        optimized_size_bytes=30,
    ).to_message()
    pod = status.pod_with_termination_message(msg, 0)
    upd = _map(
        _job([_cond("Complete")], succeeded=1, startTime=NOW, completionTime=LATER),
        [pod],
        current={"phase": "Running"},
    )
    p = upd.patch
    assert p["phase"] == "Succeeded" and p["completionTime"] == LATER and p["attempts"] == 1
    assert p["results"] == {
        "modelUri": "s3://o/model.onnx",
        "reportUri": "s3://o/report.json",
        "baselineAccuracy": 0.9,
        "optimizedAccuracy": 0.89,
        "speedup": 1.8,
        "baselineSizeBytes": 100,
        "optimizedSizeBytes": 30,
    }
    assert {c["type"]: c["status"] for c in p["conditions"]} == {"Running": "False", "Succeeded": "True"}
    assert all(c["observedGeneration"] == 3 for c in p["conditions"])
    assert upd.events == [("Normal", "Succeeded", p["message"])]


def test_failed_bad_input_reason_and_message():
    msg = RunSummary(
        status="failed",
        exit_code=2,
        reason="InvalidInput",
        error="invalid experiment field 'data': no .npz samples",
    ).to_message()
    upd = _map(
        _job([_cond("Failed", "PodFailurePolicy")], failed=1), [status.pod_with_termination_message(msg, 2)]
    )
    assert upd.patch["phase"] == "Failed" and upd.patch["reason"] == "InvalidInput"
    assert "no .npz samples" in upd.patch["message"]
    assert upd.events[0][0] == "Warning"


def test_failed_without_summary_uses_log_tail_and_exit_code():
    logs = "\n".join(f"line {i}" for i in range(20)) + "\nKilled"
    upd = _map(
        _job(
            [_cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")], failed=3
        ),
        [status.pod_with_termination_message(logs, 137)],
    )
    p = upd.patch
    assert p["reason"] == "BackoffLimitExceeded" and p["attempts"] == 3
    assert p["message"].endswith("Killed (exit code 137)") and "line 14" not in p["message"]


def test_running_pending_suspended_queued():
    assert _map(_job(active=1, ready=1)).patch["phase"] == "Running"
    pending = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "runner",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull failed"}},
                }
            ],
        },
    }
    p = _map(_job(active=1), [pending]).patch
    assert (p["phase"], p["reason"], p["message"]) == ("Pending", "ImagePullBackOff", "pull failed")
    assert _map(_job(suspend=True), suspend=True).patch["phase"] == "Suspended"
    q = _map(_job(suspend=True), suspend=False).patch
    assert (q["phase"], q["reason"]) == ("Pending", "Queued")


def test_condition_transition_time_only_changes_on_flip():
    first = _map(_job(active=1, ready=1), now=NOW).patch
    again = _map(_job(active=1, ready=1), current=first, now=LATER)
    running = next(c for c in again.patch["conditions"] if c["type"] == "Running")
    assert running["lastTransitionTime"] == NOW
    assert again.events == [], "no event when nothing changed"
    done = _map(_job([_cond("Complete")], succeeded=1), current=again.patch, now=LATER).patch
    running = next(c for c in done["conditions"] if c["type"] == "Running")
    assert running["status"] == "False" and running["lastTransitionTime"] == LATER


def test_invalid_spec_and_job_deleted():
    upd = status.invalid_spec(
        {}, "spec.storage.secretRef.name", "Secret 's3' not found", generation=1, now=NOW
    )
    types = {c["type"]: (c["status"], c["reason"]) for c in upd.patch["conditions"]}
    assert upd.patch["phase"] == "Failed" and types["InvalidSpec"] == ("True", "InvalidSpec")
    assert upd.patch["message"].startswith("spec.storage.secretRef.name")
    gone = status.job_deleted({"phase": "Running"}, "e-sparsify", generation=1, now=NOW)
    assert gone.patch["phase"] == "Failed" and gone.patch["reason"] == "JobDeleted"


def test_status_vocabulary_enums_serialize_as_the_crd_strings():
    import json
    from typing import get_args

    from sparsify_operator.models import PHASES, TERMINAL_PHASES, SparsifyExperimentStatus
    from sparsify_operator.sweep_models import SparsifySweepStatus

    (experiment_phases, _none) = get_args(SparsifyExperimentStatus.model_fields["phase"].annotation)
    assert get_args(experiment_phases) == PHASES
    (sweep_phases, _none) = get_args(SparsifySweepStatus.model_fields["phase"].annotation)
    assert set(get_args(sweep_phases)) <= set(PHASES) and set(TERMINAL_PHASES) <= set(get_args(sweep_phases))
    upd = status.invalid_spec({}, "spec.gpus", "bad", generation=1, now=NOW)
    wire = json.loads(json.dumps(upd.patch))
    assert wire["phase"] == "Failed" and wire["reason"] == "InvalidSpec"
    assert [(c["type"], c["reason"]) for c in wire["conditions"]] == [
        ("InvalidSpec", "InvalidSpec"),
        ("Failed", "InvalidSpec"),
    ]
    assert json.dumps(upd.events) == '[["Warning", "InvalidSpec", "spec.gpus: bad"]]'
