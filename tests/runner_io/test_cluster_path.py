"""The cluster path except the kubelet: the operator's Job for a SparsifyExperiment is run
as a local process with exactly its command, args and environment (Secret references
resolved from a dict standing in for the Secret; the termination log and the /scratch
volume mapped to temp paths, as the kubelet would mount them) against the test S3 server
and Pushgateway; its termination message then goes through the operator's status mapping."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rio_helpers import ACCESS_KEY, FAST_RECIPE, SECRET_KEY, free_port, http_get, keys, mkey, parse_metrics

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow

SECRET = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}  # the Secret's data
NOW = "2026-01-01T00:00:00Z"


def _experiment_object(endpoint: str, data: str) -> dict:
    return {
        "apiVersion": "sparsify.dev/v1alpha1",
        "kind": "SparsifyExperiment",
        "metadata": {
            "name": "tiny",
            "namespace": "ml-team",
            "uid": "0b9c7c1e-1111-2222-3333-444455556666",
            "generation": 1,
        },
        "spec": {
            "experiment": {
                "type": "one-shot",
                "useCase": "custom",
                "model": "s3://models/tiny/model.onnx",
                "data": data,
                "optimLevel": 0.5,
                "recipeArgs": FAST_RECIPE,
                "output": "s3://results/tiny",
            },
            "gpus": 0,
            "storage": {"endpoint": endpoint, "region": "us-east-1", "secretRef": {"name": "s3-creds"}},
        },
    }


def _pod_process(job: dict, tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    """The container of the Job's pod template as (argv, env, termination-log path)."""
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    scratch = tmp_path / "scratch"  # the emptyDir mounted at /scratch
    scratch.mkdir(exist_ok=True)
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert "/scratch" in mounts
    termination = tmp_path / "termination-log"
    env: dict[str, str] = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # the image's PATH
    for item in container["env"]:
        if "value" in item:
            value = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "s3-creds"
            if ref["key"] not in SECRET:
                assert ref.get("optional"), f"required secret key {ref['key']} missing"
                continue
            value = SECRET[ref["key"]]
        if value == container["terminationMessagePath"]:
            value = str(termination)
        elif value.startswith("/scratch"):
            value = str(scratch) + value.removeprefix("/scratch")
        env[item["name"]] = value
    entrypoint = container.get("command") or [shutil.which("sparsify-runner", path=env["PATH"])]
    assert entrypoint[0], "sparsify-runner is not installed in the venv (pip install -e .)"
    return [*entrypoint, *container["args"]], env, termination


def _settings(pushgateway: str, port: int):
    from sparsify_operator.settings import OperatorSettings

    return OperatorSettings(pushgateway_url=pushgateway, runner_metrics_port=port, check_secrets=False)


def _job_after(job: dict, exit_code: int) -> dict:
    """What the Job controller does with the pod's exit code, following the Job's own
    podFailurePolicy (the only part of the kubelet/controller we emulate)."""
    job = json.loads(json.dumps(job))
    if exit_code == 0:
        job["status"] = {
            "succeeded": 1,
            "startTime": NOW,
            "completionTime": NOW,
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": NOW}],
        }
        return job
    action = "Count"
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes and codes["operator"] == "In" and exit_code in codes["values"]:
            action = rule["action"]
            break
    reason = "PodFailurePolicy" if action == "FailJob" else "BackoffLimitExceeded"
    job["status"] = {
        "failed": 1,
        "startTime": NOW,
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "lastTransitionTime": NOW,
                "message": "pod failed",
            }
        ],
    }
    return job


def _status(job: dict, termination: Path, exit_code: int) -> dict:
    from sparsify_operator.status import map_job_status, pod_with_termination_message

    pod = pod_with_termination_message(termination.read_text(), exit_code)
    update = map_job_status({}, _job_after(job, exit_code), [pod], generation=1, spec_suspend=False, now=NOW)
    return update.patch


def test_generated_pod_succeeds_and_status_has_results(s3, s3env, tmp_path, one_shot_inputs, pushgateway):
    from sparsify_operator.jobs import build_job

    port = free_port()
    job = build_job(
        _experiment_object(s3env["AWS_ENDPOINT_URL"], "s3://datasets/calib/"), _settings(pushgateway, port)
    )
    argv, env, termination = _pod_process(job, tmp_path)
    assert "AWS_SECRET_ACCESS_KEY" in env and SECRET_KEY not in json.dumps(job), (
        "credentials only via the Secret"
    )

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scraped: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            # the PodMonitor's view while the pod runs (a scrape cut short by the shutdown is skipped)
            with contextlib.suppress(OSError, http.client.HTTPException):
                # keep the last full scrape: one that races the server's shutdown may come back empty
                scraped = parse_metrics(http_get(f"http://127.0.0.1:{port}/metrics", timeout=5)) or scraped
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    info = [k for k in scraped if k.startswith("sparsify_run_info")]
    assert info and 'namespace="ml-team"' in info[0] and 'experiment="tiny"' in info[0], sorted(scraped)[:5]
    assert SECRET_KEY not in out + err + termination.read_text()

    status = _status(job, termination, proc.returncode)
    assert status["phase"] == "Succeeded"
    results = status["results"]
    assert results["modelUri"] == "s3://results/tiny/model.onnx"
    assert results["reportUri"] == "s3://results/tiny/report.json"
    report = json.loads(s3.get_object(Bucket="results", Key="tiny/report.json")["Body"].read())
    assert results["optimizedSizeBytes"] == report["optimized"]["file_size_bytes"]
    assert results["baselineLatencyMs"] == pytest.approx(report["baseline"]["latency"]["median_ms"])
    assert "tiny/_SUCCESS.json" in keys(s3, "results")

    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    group = dict(experiment="tiny", instance="", job="sparsify-runner", namespace="ml-team")
    assert pushed[mkey("sparsify_run_success", **group)] == 1
    assert (
        pushed[mkey("sparsify_model_size_bytes", model="optimized", **group)] == results["optimizedSizeBytes"]
    )


def test_generated_pod_with_bad_input_fails_the_job(s3, s3env, tmp_path, one_shot_inputs, pushgateway):
    from sparsify_operator.jobs import build_job

    job = build_job(
        _experiment_object(s3env["AWS_ENDPOINT_URL"], "s3://datasets/typo/"),
        _settings(pushgateway, free_port()),
    )
    argv, env, termination = _pod_process(job, tmp_path)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _job_after(job, 2)["status"]["conditions"][0]["reason"] == "PodFailurePolicy", "exit 2 -> FailJob"

    status = _status(job, termination, proc.returncode)
    assert status["phase"] == "Failed" and status["reason"] == "InvalidInput"
    assert "s3://datasets/typo/" in status["message"] and "no such object or prefix" in status["message"]
    assert "results" not in status
    assert keys(s3, "results") == [], "nothing published"
    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    group = dict(experiment="tiny", instance="", job="sparsify-runner", namespace="ml-team")
    assert pushed[mkey("sparsify_run_exit_code", **group)] == 2
