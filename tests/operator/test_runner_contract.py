"""The generated pod spec drives the real runner; its termination message maps to status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from sparsify_operator.jobs import build_job
from sparsify_operator.settings import OperatorSettings
from sparsify_operator.status import map_job_status, pod_with_termination_message

ROOT = Path(__file__).resolve().parents[2]
# The image's ENTRYPOINT, taken from the environment running the tests.
RUNNER = str(Path(sys.executable).parent / "sparsify-runner")


def test_job_command_and_env_run_the_runner(tmp_path):
    doc = yaml.safe_load((ROOT / "examples/k8s/one-shot.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="6f1c")
    job = build_job(doc, OperatorSettings(runner_metrics_port=None))
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # What the kubelet would provide: the Secret's values, a writable scratch dir, the termination log.
    env.update(
        PATH=os.environ["PATH"],
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="sEcReT-42",
        HOME=str(tmp_path),
        TMPDIR=str(tmp_path),
        SPARSIFY_CACHE_DIR=str(tmp_path / "cache"),
        SPARSIFY_TERMINATION_LOG=str(tmp_path / "termination-log"),
        SPARSIFY_S3_MAX_ATTEMPTS="1",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
    )  # nothing listens: storage is unreachable
    proc = subprocess.run(
        [RUNNER, *container["args"]], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 75, proc.stderr  # transient: counted against backoffLimit, retried
    message = (tmp_path / "termination-log").read_text()
    now = "2026-01-01T00:00:00Z"
    failed = {
        "metadata": {"name": job["metadata"]["name"]},
        "spec": {},
        "status": {
            "failed": 3,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "lastTransitionTime": now,
                    "reason": "BackoffLimitExceeded",
                }
            ],
        },
    }
    update = map_job_status(
        {}, failed, [pod_with_termination_message(message, 75)], generation=1, spec_suspend=False, now=now
    )
    assert update.patch["phase"] == "Failed" and update.patch["reason"] == "TransientFailure"
    assert "cannot connect to the S3 endpoint" in update.patch["message"]
    assert "sEcReT-42" not in message + str(update.patch), "credentials never reach the status"
