"""The real operator (kopf + experiment and sweep handlers) fanning a SparsifySweep out against kmock.

The test plays the job controller and kubelet: it finishes each child's Job with a runner
termination message, the experiment reconciler turns that into the child's status, and the
sweep handlers react to the child's events.
"""

from __future__ import annotations

import asyncio
import uuid

import kmock
import pytest
from op_harness import EXP, JOBS, VERBS, Cluster, running_operator, wait_for
from sparsify_operator.jobs import KUEUE_QUEUE_LABEL, job_name
from sparsify_operator.models import GROUP, VERSION
from sparsify_operator.sweep_models import LABEL_SWEEP, SWEEP_KIND, SWEEP_PLURAL, SWEEP_SINGULAR
from sparsify_runner.contract import RunSummary

pytestmark = pytest.mark.timeout(120)
NS = "ml"
SWEEPS = f"{GROUP}/{VERSION}/{SWEEP_PLURAL}"


def sweep_manifest(name: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": SWEEP_KIND,
        "metadata": {"name": name, "namespace": NS, "uid": str(uuid.uuid4()), "resourceVersion": "1",
                     "generation": 1},
        "spec": {
            "template": {
                "experiment": {
                    "type": "one-shot",
                    "useCase": "image-classification",
                    "model": "s3://models/m.onnx",
                    "data": "s3://data/calib/",
                    "output": f"s3://out/{name}",
                },
                "gpus": 1,
                "queueName": "team-a",
                "storage": {"endpoint": "http://minio.storage:9000", "secretRef": {"name": "s3-creds"}},
            },
            "optimLevels": [0.2, 0.5, 0.8],
            "parallelism": 2,
            "objective": {"maximize": "speedup", "maxAccuracyDrop": 0.02},
        },
    }


def summary(child: str, acc: float, latency: float, size: int, speedup: float) -> str:
    return RunSummary(
        status="succeeded",
        model_uri=f"s3://out/sw/{child}/model.onnx",
        report_uri=f"s3://out/sw/{child}/report.json",
        mode="unstructured",
        baseline_accuracy=0.9,
        optimized_accuracy=acc,
        baseline_latency_ms=4.0,
        optimized_latency_ms=latency,
        baseline_size_bytes=1000,
        optimized_size_bytes=size,
        speedup=speedup,
    ).to_message()


async def _children(c: Cluster) -> list[dict]:
    items = await c.list(EXP, NS)
    return sorted(
        (o for o in items if (o["metadata"].get("labels") or {}).get(LABEL_SWEEP) == "sw"),
        key=lambda o: o["metadata"]["name"],
    )


async def _names(c: Cluster) -> list[str]:
    return [o["metadata"]["name"] for o in await _children(c)]


async def _sweep_status(c: Cluster, pred) -> dict:
    async def check():
        obj = await c.get(SWEEPS, NS, "sw")
        st = (obj or {}).get("status") or {}
        return st if pred(st) else None

    return await wait_for(check, timeout=30, what="sweep status")


async def _child_phase(c: Cluster, name: str, phase: str) -> None:
    async def check():
        obj = await c.get(EXP, NS, name)
        return obj and (obj.get("status") or {}).get("phase") == phase

    await wait_for(check, timeout=20, what=f"{name} {phase}")


def test_fan_out_parallelism_aggregate_and_cascade_delete():
    async def scenario():
        async with Cluster() as c:
            _register_sweeps(c)
            await c.secret(NS, "s3-creds")
            sw = sweep_manifest("sw")
            async with running_operator([NS]):
                await c.create(SWEEPS, sw)
                # exactly `parallelism` children first, each a normal experiment with its own Job
                await wait_for(lambda: _has_n(c, 2), what="two children")
                await asyncio.sleep(1.0)
                assert await _names(c) == ["sw-020-u", "sw-050-u"]
                for child in await _children(c):
                    meta = child["metadata"]
                    (ref,) = meta["ownerReferences"]
                    assert ref["kind"] == SWEEP_KIND and ref["uid"] == sw["metadata"]["uid"]
                    assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
                    assert meta["labels"][KUEUE_QUEUE_LABEL] == "team-a"
                    assert child["spec"]["queueName"] == "team-a"
                for name in ("sw-020-u", "sw-050-u"):
                    await _child_phase(c, name, "Pending")
                jobs = {j["metadata"]["name"]: j for j in await c.list(JOBS, NS)}
                assert set(jobs) == {job_name("sw-020-u"), job_name("sw-050-u")}
                assert jobs[job_name("sw-050-u")]["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
                st = await _sweep_status(c, lambda s: s.get("phase") == "Pending")
                assert st["summary"] == "0/3 succeeded, 3 to go"

                # one finishes -> the third point is created (still never more than 2 active)
                await c.finish_job(NS, job_name("sw-020-u"), exit_code=0,
                                   message=summary("sw-020-u", 0.9, 2.0, 600, 2.0))
                await wait_for(lambda: _has_n(c, 3), what="the third child")
                assert await _names(c) == ["sw-020-u", "sw-050-u", "sw-080-u"]
                await _child_phase(c, "sw-080-u", "Pending")

                await c.finish_job(NS, job_name("sw-050-u"), exit_code=0,
                                   message=summary("sw-050-u", 0.89, 1.0, 400, 4.0))
                await c.finish_job(NS, job_name("sw-080-u"), exit_code=0,
                                   message=summary("sw-080-u", 0.7, 0.5, 200, 8.0))
                st = await _sweep_status(c, lambda s: s.get("phase") == "Succeeded")
                assert st["summary"] == "3/3 succeeded" and st["reason"] == "AllSucceeded"
                assert st["best"]["name"] == "sw-050-u", "fastest within 2 points of accuracy"
                assert st["pareto"] == {"latency": ["sw-080-u", "sw-050-u", "sw-020-u"],
                                        "size": ["sw-080-u", "sw-050-u", "sw-020-u"]}
                points = {p["name"]: p for p in st["points"]}
                assert points["sw-050-u"]["latencyMs"] == 1.0 and points["sw-050-u"]["speedup"] == 4.0
                assert points["sw-050-u"]["reportUri"] == "s3://out/sw/sw-050-u/report.json"
                assert st["observedGeneration"] == 1
                assert any(c_["type"] == "Complete" and c_["status"] == "True" for c_ in st["conditions"])
                assert len(await c.list(JOBS, NS)) == 3, "no duplicate children or Jobs"

                # deleting the sweep deletes its children (and their Jobs) - no GC in the emulator
                await c.delete(SWEEPS, NS, "sw")
                await wait_for(lambda: _all_gone(c), timeout=30, what="sweep, children and Jobs gone")

    asyncio.run(scenario())


def test_restart_failed_points_and_all_failed():
    async def scenario():
        async with Cluster() as c:
            _register_sweeps(c)
            await c.secret(NS, "s3-creds")
            sw = sweep_manifest("sw")
            sw["spec"]["optimLevels"] = [0.2, 0.5]
            async with running_operator([NS]):
                await c.create(SWEEPS, sw)
                await wait_for(lambda: _has_n(c, 2), what="two children")
                for name in ("sw-020-u", "sw-050-u"):
                    await _child_phase(c, name, "Pending")
            # an operator restart (resume handlers) converges: no duplicate children or Jobs
            async with running_operator([NS]):
                await asyncio.sleep(1.0)
                assert await _names(c) == ["sw-020-u", "sw-050-u"]
                assert len(await c.list(JOBS, NS)) == 2
                bad = RunSummary(status="failed", exit_code=2, reason="InvalidInput",
                                 error="model has dynamic shapes").to_message()
                await c.finish_job(NS, job_name("sw-020-u"), exit_code=2, message=bad,
                                   reason="PodFailurePolicy")
                st = await _sweep_status(c, lambda s: "1 failed" in (s.get("summary") or ""))
                assert st["phase"] == "Running"
                await c.finish_job(NS, job_name("sw-050-u"), exit_code=2, message=bad,
                                   reason="PodFailurePolicy")
                st = await _sweep_status(c, lambda s: s.get("phase") == "Failed")
                assert st["reason"] == "AllFailed" and st.get("best") is None
                assert all("dynamic shapes" in p["message"] for p in st["points"])

    asyncio.run(scenario())


def _register_sweeps(c: Cluster) -> None:
    c.k.resources[SWEEPS] = kmock.ResourceInfo(
        kind=SWEEP_KIND, namespaced=True, verbs=VERBS, subresources={"status"}, singular=SWEEP_SINGULAR
    )


async def _has_n(c: Cluster, n: int) -> bool:
    return len(await _children(c)) >= n


async def _all_gone(c: Cluster) -> bool:
    return await c.get(SWEEPS, NS, "sw") is None and not await _children(c) and not await c.list(JOBS, NS)
