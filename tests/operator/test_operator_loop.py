"""The real operator (kopf + handlers) against kmock's Kubernetes emulator.

Each test starts an emulator and the operator in-process; the test plays the job
controller and kubelet (Job status, pods with termination messages).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from op_harness import EXP, JOBS, Cluster, experiment, running_operator, wait_for
from prometheus_client import REGISTRY
from sparsify_operator.jobs import build_job
from sparsify_operator.settings import OperatorSettings
from sparsify_runner.contract import RunSummary

pytestmark = pytest.mark.timeout(120)
NS = "ml"


def run(coro):
    return asyncio.run(coro)


async def _phase(c: Cluster, name: str, phase: str, timeout: float = 20):
    async def check():
        obj = await c.get(EXP, NS, name)
        return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

    return await wait_for(check, timeout=timeout, what=f"{name} to be {phase}")


async def _jobs(c: Cluster) -> list[dict]:
    return await c.list(JOBS, NS)


async def _event_reasons(c: Cluster) -> list[str]:
    return [e.get("reason") for e in await c.list("v1/events", NS)]


def _reconciles() -> float:
    return (
        REGISTRY.get_sample_value(
            "sparsify_operator_reconcile_duration_seconds_count", {"handler": "ensure-job"}
        )
        or 0.0
    )


def test_create_succeed_restart_delete():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            exp = experiment("exp1")
            async with running_operator([NS]):
                await c.create(EXP, exp)
                await _phase(c, "exp1", "Pending")
                jobs = await _jobs(c)
                assert len(jobs) == 1
                job = jobs[0]
                expected = build_job(exp, OperatorSettings())
                assert job["metadata"]["name"] == "exp1-sparsify"
                assert job["spec"] == expected["spec"], "the Job is exactly what build_job returns"
                assert job["metadata"]["ownerReferences"][0]["uid"] == exp["metadata"]["uid"]
                obj = await c.get(EXP, NS, "exp1")
                assert obj["status"]["jobName"] == "exp1-sparsify"
                assert any(
                    x["type"] == "JobCreated" and x["status"] == "True" for x in obj["status"]["conditions"]
                )
                assert "kopf" not in obj["status"], "kopf progress lives in annotations"
                await wait_for(lambda: _has_event(c, "JobCreated"), what="JobCreated event")

                # the Job runs, then succeeds with the runner's termination message
                await c.patch(JOBS, NS, "exp1-sparsify", {"status": {"active": 1, "ready": 1}}, sub="status")
                await _phase(c, "exp1", "Running")
                summary = RunSummary(
                    status="succeeded",
                    model_uri="s3://out/exp1/model.onnx",
                    report_uri="s3://out/exp1/report.json",
                    speedup=2.1,
                    baseline_accuracy=0.91,
                    optimized_accuracy=0.9,
                )
                await c.finish_job(NS, "exp1-sparsify", exit_code=0, message=summary.to_message())
                done = await _phase(c, "exp1", "Succeeded")
                assert done["status"]["results"]["modelUri"] == "s3://out/exp1/model.onnx"
                assert done["status"]["results"]["speedup"] == 2.1
                assert done["status"]["completionTime"]

            # operator restart: resume handlers run again, still exactly one Job
            before = _reconciles()
            async with running_operator([NS]):
                await wait_for(lambda: asyncio.sleep(0, _reconciles() > before), what="resume reconcile")
                await asyncio.sleep(0.5)
                assert len(await _jobs(c)) == 1
                assert (await c.get(EXP, NS, "exp1"))["status"]["phase"] == "Succeeded"

                # deleting the experiment deletes its Job (the finalizer handler; no GC here)
                await c.delete(EXP, NS, "exp1")
                await wait_for(lambda: _gone(c), what="experiment and job deleted")

    run(scenario())


async def _has_event(c: Cluster, reason: str) -> bool:
    return reason in await _event_reasons(c)


async def _gone(c: Cluster) -> bool:
    return await c.get(EXP, NS, "exp1") is None and not await _jobs(c)


def test_job_failure_bad_input_and_job_deleted():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            async with running_operator([NS]):
                await c.create(EXP, experiment("bad"))
                await _phase(c, "bad", "Pending")
                msg = RunSummary(
                    status="failed",
                    exit_code=2,
                    reason="InvalidInput",
                    error="invalid experiment field 'data': no samples under s3://data/calib/",
                )
                await c.finish_job(
                    NS, "bad-sparsify", exit_code=2, message=msg.to_message(), reason="PodFailurePolicy"
                )
                failed = await _phase(c, "bad", "Failed")
                assert failed["status"]["reason"] == "InvalidInput"
                assert "no samples" in failed["status"]["message"]

                # a Job deleted before it finished: reported, never recreated
                await c.create(EXP, experiment("gone"))
                await _phase(c, "gone", "Pending")
                await c.delete(JOBS, NS, "gone-sparsify")
                gone = await _phase(c, "gone", "Failed")
                assert gone["status"]["reason"] == "JobDeleted"
                await asyncio.sleep(1.0)
                assert [j["metadata"]["name"] for j in await _jobs(c)] == ["bad-sparsify"]
            assert (
                REGISTRY.get_sample_value("sparsify_operator_job_failures_total", {"reason": "JobDeleted"})
                >= 1
            )

    run(scenario())


def test_invalid_specs_fail_without_a_job_and_suspend():
    async def scenario():
        async with Cluster() as c, running_operator([NS]):
            # missing Secret
            await c.create(EXP, experiment("nosecret"))
            failed = await _phase(c, "nosecret", "Failed")
            assert failed["status"]["reason"] == "InvalidSpec"
            assert "spec.storage.secretRef.name" in failed["status"]["message"]
            conds = {x["type"]: x for x in failed["status"]["conditions"]}
            assert conds["InvalidSpec"]["status"] == "True"
            # a local path the cluster cannot read
            await c.secret(NS, "s3-creds")
            local = experiment("local")
            local["spec"]["experiment"]["model"] = "/home/me/model.onnx"
            await c.create(EXP, local)
            failed = await _phase(c, "local", "Failed")
            assert failed["status"]["message"].startswith("spec.experiment.model")
            assert await _jobs(c) == []

            # suspend: the Job is created suspended, then resumed by flipping spec.suspend
            susp = experiment("susp", suspend=True)
            await c.create(EXP, susp)
            await _phase(c, "susp", "Suspended")
            job = (await _jobs(c))[0]
            assert job["spec"]["suspend"] is True
            await c.patch(EXP, NS, "susp", {"spec": {"suspend": False}, "metadata": {"generation": 2}})

            async def resumed():
                jobs = await _jobs(c)
                return jobs and jobs[0]["spec"]["suspend"] is False

            await wait_for(resumed, what="job resumed")

    run(scenario())


def test_repeated_events_never_duplicate_jobs():
    """Concurrent create/resume handling of many experiments: one Job each, even if the
    Job already exists when the handler runs (restart between create and status patch)."""

    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            pre = experiment("pre")
            await c.create(
                JOBS,
                {
                    **build_job(pre, OperatorSettings()),
                    "metadata": {**build_job(pre, OperatorSettings())["metadata"], "resourceVersion": "1"},
                },
            )
            await c.create(EXP, pre)
            names = [f"e{i}" for i in range(10)]
            async with running_operator([NS]):
                await asyncio.gather(*(c.create(EXP, experiment(n)) for n in names))
                for n in [*names, "pre"]:
                    await _phase(c, n, "Pending")
                jobs = await _jobs(c)
                assert sorted(j["metadata"]["name"] for j in jobs) == sorted(
                    f"{n}-sparsify" for n in [*names, "pre"]
                )
                pre_status = (await c.get(EXP, NS, "pre"))["status"]
                assert json.dumps(pre_status).count("JobCreated") >= 1

    run(scenario())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_operator_entry_point_metrics_and_liveness():
    """`sparsify-operator` as a process: reconciles, serves /metrics and the liveness probe."""
    import os
    import subprocess
    import sys
    import urllib.request

    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            metrics_port, live_port = _free_port(), _free_port()
            env = {**os.environ, "KUBECONFIG": c.kubeconfig, "SPARSIFY_PEERING": ""}
            cmd = [
                sys.executable,
                "-c",
                "from sparsify_operator.main import main; main()",
                "--all-namespaces",
                "--metrics-port",
                str(metrics_port),
                "--liveness",
                f"http://127.0.0.1:{live_port}/healthz",
            ]
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                await c.create(EXP, experiment("proc"))
                await _phase(c, "proc", "Pending", timeout=40)
                assert len(await _jobs(c)) == 1

                def get(url: str) -> tuple[int, str]:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        return resp.status, resp.read().decode()

                async def metrics_ok():
                    try:
                        _, text = await asyncio.to_thread(get, f"http://127.0.0.1:{metrics_port}/metrics")
                    except OSError:
                        return False
                    return 'sparsify_operator_experiments{phase="Pending"} 1.0' in text and text

                text = await wait_for(metrics_ok, timeout=20, what="metrics")
                assert "sparsify_operator_reconcile_duration_seconds_bucket" in text
                assert "sparsify_operator_job_failures_total" in text
                status, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{live_port}/healthz")
                assert status == 200
            finally:
                proc.terminate()  # the emulator must keep serving while kopf shuts down
                await asyncio.to_thread(proc.wait, 30)

    run(scenario())


def test_operator_requires_a_scope():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "from sparsify_operator.main import main; main()"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "--namespace" in proc.stderr
