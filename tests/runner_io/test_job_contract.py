"""The Job contract, through real runner processes: the termination message (<= 4 KiB)
and exit code on success and every failure path, SIGTERM, and /metrics during a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rio_helpers import SECRET_KEY, free_port, http_get, keys, mkey, parse_metrics, read_summary, runner_cmd

STANDIN = [sys.executable, str(Path(__file__).with_name("standin_runner.py"))]


def _experiment(tmp_path: Path, **over) -> str:
    spec = {
        "name": "contract",
        "type": "one-shot",
        "useCase": "custom",
        "model": "s3://inputs/model.onnx",
        "data": "s3://inputs/calib/",
        "optimLevel": 0.5,
        "output": "s3://outputs/contract",
    }
    spec.update(over)
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _env(s3env: dict, tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARSIFY_", "AWS_"))}
    env.update(s3env)
    env.update(
        {"SPARSIFY_TERMINATION_LOG": str(tmp_path / "termination-log"), "STANDIN_FLAGS": str(tmp_path)}
    )
    env.update(extra)
    return env


def _inputs(s3) -> None:
    s3.create_bucket(Bucket="inputs")
    s3.create_bucket(Bucket="outputs")
    s3.put_object(Bucket="inputs", Key="model.onnx", Body=b"not-really-onnx")
    s3.put_object(Bucket="inputs", Key="calib/sample_0.npz", Body=b"x")


def _run(cmd: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_bad_spec_exit_2_with_message_and_failure_push(s3env, tmp_path, pushgateway):
    env = _env(
        s3env,
        tmp_path,
        SPARSIFY_PUSHGATEWAY_URL=pushgateway,
        SPARSIFY_EXPERIMENT_NAME="bad-spec",
        SPARSIFY_EXPERIMENT_NAMESPACE="ns1",
    )
    proc = _run([*runner_cmd(), "run", "--quiet", "--experiment", _experiment(tmp_path, optimLevel=150)], env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: invalid experiment field 'optimLevel'")
    summary = read_summary(tmp_path / "termination-log")
    assert summary["status"] == "failed" and summary["exitCode"] == 2 and summary["reason"] == "InvalidInput"
    assert "optimLevel" in summary["error"]
    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    group = dict(experiment="bad-spec", instance="", job="sparsify-runner", namespace="ns1")
    assert pushed[mkey("sparsify_run_exit_code", **group)] == 2


def test_missing_input_exit_2_nothing_published(s3, s3env, tmp_path):
    _inputs(s3)
    proc = _run(
        [*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path, data="s3://inputs/typo/")],
        _env(s3env, tmp_path),
    )
    assert proc.returncode == 2, proc.stderr
    assert "data 's3://inputs/typo/': no such object or prefix" in proc.stderr
    summary = read_summary(tmp_path / "termination-log")
    assert summary["reason"] == "InvalidInput" and "s3://inputs/typo/" in summary["error"]
    assert keys(s3, "outputs") == []


def test_unreachable_endpoint_exit_75_without_credentials_in_output(s3env, tmp_path):
    env = _env(s3env, tmp_path, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    proc = _run([*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path)], env)
    assert proc.returncode == 75, proc.stderr
    summary = read_summary(tmp_path / "termination-log")
    assert summary["reason"] == "TransientFailure" and "cannot connect" in summary["error"]
    for text in (proc.stderr, proc.stdout, (tmp_path / "termination-log").read_text()):
        assert SECRET_KEY not in text and s3env["AWS_ACCESS_KEY_ID"] not in text


def test_crash_exit_1_with_message(s3, s3env, tmp_path):
    _inputs(s3)
    proc = _run(
        [*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path)],
        _env(s3env, tmp_path, STANDIN_MODE="crash"),
    )
    assert proc.returncode == 1
    summary = read_summary(tmp_path / "termination-log")
    assert summary == {
        "status": "failed",
        "exitCode": 1,
        "reason": "InternalError",
        "error": "RuntimeError: stand-in pathway crashed",
    }
    assert keys(s3, "outputs") == []


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early: {proc.communicate()}")
        assert time.monotonic() < deadline, "runner did not reach the pathway"
        time.sleep(0.05)


def test_sigterm_exit_143_preempted(s3, s3env, tmp_path, pushgateway):
    _inputs(s3)
    env = _env(s3env, tmp_path, STANDIN_MODE="wait", SPARSIFY_PUSHGATEWAY_URL=pushgateway)
    proc = subprocess.Popen(
        [*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path, name="preempt")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(tmp_path / "started", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    summary = read_summary(tmp_path / "termination-log")
    assert summary["reason"] == "Preempted" and summary["exitCode"] == 143
    assert keys(s3, "outputs") == []
    pushed = parse_metrics(http_get(f"{pushgateway}/metrics"))
    group = dict(experiment="preempt", instance="", job="sparsify-runner", namespace="default")
    assert pushed[mkey("sparsify_run_failures_total", reason="Preempted", **group)] == 1


def test_sigterm_while_stuck_in_native_code_still_reports(s3, s3env, tmp_path):
    """The Python handler cannot run while the main thread is in C; the watchdog can."""
    _inputs(s3)
    env = _env(s3env, tmp_path, STANDIN_MODE="native", SPARSIFY_STOP_GRACE_SECONDS="0.5")
    proc = subprocess.Popen(
        [*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(tmp_path / "in_native", proc)  # the main thread is inside system() now
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    summary = read_summary(tmp_path / "termination-log")
    assert summary["reason"] == "Preempted" and "did not stop within 0.5 s" in summary["error"]
    assert keys(s3, "outputs") == []


def test_metrics_scraped_during_a_run_then_success(s3, s3env, tmp_path):
    _inputs(s3)
    port = free_port()
    env = _env(s3env, tmp_path, STANDIN_MODE="wait", SPARSIFY_METRICS_ADDR="127.0.0.1")
    proc = subprocess.Popen(
        [*STANDIN, "run", "--quiet", "--metrics-port", str(port), "--experiment", _experiment(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(tmp_path / "started", proc)
        metrics = parse_metrics(http_get(f"http://127.0.0.1:{port}/metrics"))
        (tmp_path / "go").write_text("1")
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert metrics['sparsify_stage{sparsify_stage="prune"}'] == 1
    assert metrics["sparsify_progress_ratio{}"] == 0.5 and metrics["sparsify_training_loss{}"] == 0.125
    assert metrics["sparsify_storage_downloaded_objects_total{}"] == 2
    summary = read_summary(tmp_path / "termination-log")
    assert summary["status"] == "succeeded" and summary["modelUri"] == "s3://outputs/contract/model.onnx"
    assert summary["reportUri"] == "s3://outputs/contract/report.json"
    assert keys(s3, "outputs") == [
        "contract/_SUCCESS.json",
        "contract/model.onnx",
        "contract/report.html",
        "contract/report.json",
    ]


@pytest.mark.parametrize("reuse", ["auto", "never"])
def test_retried_run_reuses_finished_result(s3, s3env, tmp_path, reuse):
    _inputs(s3)
    env = _env(s3env, tmp_path, SPARSIFY_REUSE_RESULT=reuse)
    first = _run([*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path)], env)
    assert first.returncode == 0, first.stderr
    marker = json.loads(s3.get_object(Bucket="outputs", Key="contract/_SUCCESS.json")["Body"].read())
    (tmp_path / "started").unlink()
    (tmp_path / "termination-log").unlink()
    second = _run([*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path)], env)
    assert second.returncode == 0, second.stderr
    again = json.loads(s3.get_object(Bucket="outputs", Key="contract/_SUCCESS.json")["Body"].read())
    assert read_summary(tmp_path / "termination-log")["modelUri"] == "s3://outputs/contract/model.onnx"
    if reuse == "auto":
        assert not (tmp_path / "started").exists(), "the pathway must not run again"
        assert again["runId"] == marker["runId"]
    else:
        assert (tmp_path / "started").exists() and again["runId"] != marker["runId"]
    # A different spec is a different experiment: it runs.
    (tmp_path / "started").unlink(missing_ok=True)
    third = _run([*STANDIN, "run", "--quiet", "--experiment", _experiment(tmp_path, optimLevel=0.9)], env)
    assert third.returncode == 0 and (tmp_path / "started").exists()
