"""``spec.nodes`` > 1 through ``Reconciler.sync_experiment`` against kmock's emulator: a JobSet
where the API serves JobSets (found by API discovery), a clear refusal where it does not."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kmock
import pytest
from op_harness import EXP, JOBS, PODS, VERBS, Cluster, experiment
from sparsify_operator.kube import Kube
from sparsify_operator.reconcile import Reconciler
from sparsify_operator.settings import OperatorSettings
from sparsify_runner.contract import RunSummary
from test_sync import RecordingKube

pytestmark = pytest.mark.timeout(120)
NS = "ml"
JOBSETS = "jobset.x-k8s.io/v1alpha2/jobsets"


def _training(name: str, **spec: Any) -> dict[str, Any]:
    exp = experiment(name, **{"nodes": 2, "gpus": 4, **spec})
    exp["spec"]["experiment"] = {
        "type": "training-aware",
        "useCase": "image-classification",
        "model": "s3://models/resnet.pt",
        "data": "s3://data/images/",
        "optimLevel": 0.5,
        "output": f"s3://out/{name}",
    }
    return exp


def _serve_jobsets(c: Cluster) -> None:
    c.k.resources[JOBSETS] = kmock.ResourceInfo(
        kind="JobSet", namespaced=True, verbs=VERBS, subresources={"status"}
    )


def _reconciler() -> tuple[Reconciler, RecordingKube, list[tuple[str, str]]]:
    kube = RecordingKube(Kube())
    events: list[tuple[str, str]] = []
    rec = Reconciler(
        kube, OperatorSettings(), emit=lambda body, etype, reason, msg: events.append((etype, reason))
    )
    return rec, kube, events


async def _status(c: Cluster, name: str) -> dict[str, Any]:
    return (await c.get(EXP, NS, name))["status"]


async def _node_pod(c: Cluster, jobset: str, index: int, message: str) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    await c.create(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{jobset}-node-0-{index}-x1",
                "namespace": NS,
                "resourceVersion": "1",
                "creationTimestamp": now,
                "labels": {"jobset.sigs.k8s.io/jobset-name": jobset},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            },
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {"name": "runner", "state": {"terminated": {"exitCode": 0, "message": message}}}
                ],
            },
        },
    )


def test_nodes_create_a_jobset_and_follow_its_conditions():
    async def scenario():
        async with Cluster() as c:
            _serve_jobsets(c)
            await c.secret(NS, "s3-creds")
            await c.create(EXP, _training("multi"))
            rec, kube, events = _reconciler()

            await rec.sync_experiment(NS, "multi")
            assert kube.take() == ["create_jobset", "patch_experiment_status"]
            assert await c.list(JOBS, NS) == [], "a JobSet, not a Job"
            [js] = await c.list(JOBSETS, NS)
            assert js["metadata"]["name"] == "multi-sparsify"
            assert js["spec"]["replicatedJobs"][0]["template"]["spec"]["completions"] == 2
            st = await _status(c, "multi")
            assert st["phase"] == "Pending" and st["jobName"] == "multi-sparsify"
            assert st["message"] == "JobSet multi-sparsify is starting"
            assert ("Normal", "JobCreated") in events
            await rec.sync_experiment(NS, "multi")
            assert kube.take() == [], "converged: no second write, no second JobSet"

            running = {"replicatedJobsStatus": [{"name": "node", "ready": 1, "active": 1}]}
            await c.patch(JOBSETS, NS, "multi-sparsify", {"status": running}, sub="status")
            await rec.sync_experiment(NS, "multi")
            assert kube.take() == ["patch_experiment_status"]
            assert (await _status(c, "multi"))["phase"] == "Running"

            leader = RunSummary(status="succeeded", model_uri="s3://out/multi/model.onnx", speedup=3.0)
            await _node_pod(c, "multi-sparsify", 0, leader.to_message())
            await _node_pod(c, "multi-sparsify", 1, RunSummary(status="succeeded").to_message())
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            done = {"conditions": [{"type": "Completed", "status": "True", "lastTransitionTime": now}]}
            await c.patch(JOBSETS, NS, "multi-sparsify", {"status": done}, sub="status")
            await rec.sync_experiment(NS, "multi")
            st = await _status(c, "multi")
            assert st["phase"] == "Succeeded" and st["results"]["speedup"] == 3.0
            assert st["results"]["modelUri"] == "s3://out/multi/model.onnx"
            kube.take()
            await rec.sync_experiment(NS, "multi")
            assert kube.take() == [], "finished results are final"

    asyncio.run(scenario())


def test_nodes_without_the_jobset_crd_fail_with_a_clear_condition():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            await c.create(EXP, _training("nojs"))
            rec, kube, events = _reconciler()
            await rec.sync_experiment(NS, "nojs")
            assert kube.take() == ["patch_experiment_status"], "nothing created"
            st = await _status(c, "nojs")
            assert st["phase"] == "Failed" and st["reason"] == "JobSetNotInstalled"
            assert st["message"].startswith("spec.nodes: 2 nodes") and "install JobSet" in st["message"]
            failed = next(x for x in st["conditions"] if x["type"] == "Failed")
            assert failed["status"] == "True" and failed["reason"] == "JobSetNotInstalled"
            assert events == [("Warning", "JobSetNotInstalled")]
            assert await c.list(JOBS, NS) == []
            await rec.sync_experiment(NS, "nojs")
            assert kube.take() == []
            await rec.cleanup(await c.get(EXP, NS, "nojs"))  # nothing to delete, no error

    asyncio.run(scenario())


def test_one_node_still_runs_a_job_where_jobset_is_installed():
    async def scenario():
        async with Cluster() as c:
            _serve_jobsets(c)
            await c.secret(NS, "s3-creds")
            await c.create(EXP, _training("single", nodes=1))
            rec, kube, _ = _reconciler()
            await rec.sync_experiment(NS, "single")
            assert kube.take() == ["create_job", "patch_experiment_status"]
            [job] = await c.list(JOBS, NS)
            assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["torchrun"]
            assert await c.list(JOBSETS, NS) == []

    asyncio.run(scenario())


def test_suspend_resume_and_cleanup_act_on_the_jobset():
    async def scenario():
        async with Cluster() as c:
            _serve_jobsets(c)
            await c.secret(NS, "s3-creds")
            await c.create(EXP, _training("susp", suspend=True))
            rec, kube, events = _reconciler()
            await rec.sync_experiment(NS, "susp")
            assert (await _status(c, "susp"))["phase"] == "Suspended"
            assert (await c.get(JOBSETS, NS, "susp-sparsify"))["spec"]["suspend"] is True
            kube.take()

            await c.patch(EXP, NS, "susp", {"spec": {"suspend": False}, "metadata": {"generation": 2}})
            await rec.sync_experiment(NS, "susp")
            assert kube.take() == ["patch_jobset", "patch_experiment_status"]
            assert ("Normal", "Resumed") in events
            assert (await c.get(JOBSETS, NS, "susp-sparsify"))["spec"]["suspend"] is False
            assert (await _status(c, "susp"))["phase"] == "Pending"

            await rec.cleanup(await c.get(EXP, NS, "susp"))
            assert kube.take() == ["delete_jobset"]
            assert await c.list(JOBSETS, NS) == []

    asyncio.run(scenario())


def test_a_deleted_jobset_is_reported_not_recreated():
    async def scenario():
        async with Cluster() as c:
            _serve_jobsets(c)
            await c.secret(NS, "s3-creds")
            await c.create(EXP, _training("gone"))
            rec, kube, _ = _reconciler()
            await rec.sync_experiment(NS, "gone")
            await c.delete(JOBSETS, NS, "gone-sparsify")
            kube.take()
            await rec.sync_experiment(NS, "gone")
            assert kube.take() == ["patch_experiment_status"]
            st = await _status(c, "gone")
            assert st["phase"] == "Failed" and st["reason"] == "JobDeleted"
            assert st["message"].startswith("JobSet gone-sparsify was deleted")

    asyncio.run(scenario())


def test_the_operator_follows_jobset_events():
    """The real kopf loop: the follow-jobset handler turns JobSet status changes into the
    experiment's phase (no sync is called by the test)."""
    from op_harness import running_operator, wait_for

    async def phase(c: Cluster, name: str, want: str):
        async def check():
            obj = await c.get(EXP, NS, name)
            return obj if obj and (obj.get("status") or {}).get("phase") == want else None

        return await wait_for(check, timeout=30, what=f"{name} to be {want}")

    async def scenario():
        async with Cluster() as c:
            _serve_jobsets(c)
            await c.secret(NS, "s3-creds")
            async with running_operator([NS]):
                await c.create(EXP, _training("looped"))
                await phase(c, "looped", "Pending")
                [js] = await c.list(JOBSETS, NS)
                assert js["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sparsify-operator"
                running = {"replicatedJobsStatus": [{"name": "node", "ready": 2, "active": 1}]}
                await c.patch(JOBSETS, NS, "looped-sparsify", {"status": running}, sub="status")
                await phase(c, "looped", "Running")
                summary = RunSummary(status="succeeded", model_uri="s3://out/looped/model.onnx", speedup=1.5)
                await _node_pod(c, "looped-sparsify", 0, summary.to_message())
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                done = {"conditions": [{"type": "Completed", "status": "True", "lastTransitionTime": now}]}
                await c.patch(JOBSETS, NS, "looped-sparsify", {"status": done}, sub="status")
                obj = await phase(c, "looped", "Succeeded")
                assert obj["status"]["results"]["speedup"] == 1.5

    asyncio.run(scenario())
