"""``Reconciler.sync_experiment`` called directly (no kopf) against kmock's emulator: it is
level-triggered and idempotent, so a second call with nothing changed writes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from op_harness import EXP, JOBS, Cluster, experiment
from sparsify_operator.jobs import build_job
from sparsify_operator.kube import ApiError, Kube
from sparsify_operator.reconcile import Reconciler
from sparsify_operator.settings import OperatorSettings
from sparsify_runner.contract import RunSummary

pytestmark = pytest.mark.timeout(120)
NS = "ml"


class RecordingKube:
    """The real client, with every write (create/patch/delete) recorded by method name."""

    def __init__(self, kube: Kube, fail_creates: int = 0) -> None:
        self._kube = kube
        self.writes: list[str] = []
        self.fail_creates = fail_creates

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._kube, name)
        if not name.startswith(("create_", "patch_", "delete_")):
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes.append(name)
            if name == "create_job" and self.fail_creates:
                self.fail_creates -= 1
                raise ApiError(500, "InternalError", "etcd is unavailable")
            return attr(*args, **kwargs)

        return write

    def take(self) -> list[str]:
        writes, self.writes = self.writes, []
        return writes


def _reconciler(fail_creates: int = 0) -> tuple[Reconciler, RecordingKube, list[tuple[str, str]]]:
    kube = RecordingKube(Kube(), fail_creates=fail_creates)
    events: list[tuple[str, str]] = []
    rec = Reconciler(
        kube, OperatorSettings(), emit=lambda body, etype, reason, msg: events.append((etype, reason))
    )
    return rec, kube, events


async def _status(c: Cluster, name: str) -> dict[str, Any]:
    return (await c.get(EXP, NS, name))["status"]


def test_sync_twice_writes_once_at_every_stage():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            await c.create(EXP, experiment("idem"))
            rec, kube, events = _reconciler()

            await rec.sync_experiment(NS, "idem")
            assert kube.take() == ["create_job", "patch_experiment_status"]
            assert events == [("Normal", "JobCreated"), ("Normal", "Starting")]
            first = await _status(c, "idem")
            assert first["phase"] == "Pending" and first["jobName"] == "idem-sparsify"
            await rec.sync_experiment(NS, "idem")
            assert kube.take() == [], "nothing changed: no second write"
            assert len(await c.list(JOBS, NS)) == 1 and await _status(c, "idem") == first

            # the Job runs: one status write, then none
            await c.patch(JOBS, NS, "idem-sparsify", {"status": {"active": 1, "ready": 1}}, sub="status")
            await rec.sync_experiment(NS, "idem")
            assert kube.take() == ["patch_experiment_status"]
            assert (await _status(c, "idem"))["phase"] == "Running"
            await rec.sync_experiment(NS, "idem")
            assert kube.take() == []

            # it finishes: the results once, then finished results are final
            summary = RunSummary(status="succeeded", model_uri="s3://out/idem/model.onnx", speedup=2.0)
            await c.finish_job(NS, "idem-sparsify", exit_code=0, message=summary.to_message())
            await rec.sync_experiment(NS, "idem")
            assert kube.take() == ["patch_experiment_status"]
            done = await _status(c, "idem")
            assert done["phase"] == "Succeeded" and done["results"]["speedup"] == 2.0
            events.clear()
            await rec.sync_experiment(NS, "idem")
            await rec.sync_experiment(NS, "idem")
            assert kube.take() == [] and events == []
            assert await _status(c, "idem") == done

    asyncio.run(scenario())


def test_sync_resumes_a_suspended_job_in_one_call():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            await c.create(EXP, experiment("susp", suspend=True))
            rec, kube, events = _reconciler()
            await rec.sync_experiment(NS, "susp")
            assert (await _status(c, "susp"))["phase"] == "Suspended"
            kube.take()

            await c.patch(EXP, NS, "susp", {"spec": {"suspend": False}, "metadata": {"generation": 2}})
            await rec.sync_experiment(NS, "susp")
            assert kube.take() == ["patch_job", "patch_experiment_status"]
            assert ("Normal", "Resumed") in events
            assert (await c.get(JOBS, NS, "susp-sparsify"))["spec"]["suspend"] is False
            st = await _status(c, "susp")
            assert st["phase"] == "Pending" and st["reason"] == "Starting"
            assert {x["type"]: x["status"] for x in st["conditions"]}["Suspended"] == "False"
            await rec.sync_experiment(NS, "susp")
            assert kube.take() == [], "the status already follows the resumed Job"

    asyncio.run(scenario())


def test_sync_adopts_an_existing_job_and_converges_in_one_write():
    """The Job exists but the status does not say so (a restart between create and patch)."""

    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            exp = experiment("pre")
            job = build_job(exp, OperatorSettings())
            await c.create(JOBS, {**job, "metadata": {**job["metadata"], "resourceVersion": "1"}})
            await c.create(EXP, exp)
            rec, kube, _ = _reconciler()
            await rec.sync_experiment(NS, "pre")
            assert kube.take() == ["patch_experiment_status"]
            st = await _status(c, "pre")
            assert {x["type"] for x in st["conditions"]} == {"Running", "JobCreated"}
            await rec.sync_experiment(NS, "pre")
            assert kube.take() == []

    asyncio.run(scenario())


def test_transient_create_failure_is_retried_not_reported_as_deleted():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            await c.create(EXP, experiment("flaky"))
            rec, kube, _ = _reconciler(fail_creates=1)
            with pytest.raises(ApiError):
                await rec.sync_experiment(NS, "flaky")  # kopf retries the handler
            st = await _status(c, "flaky")
            assert st["phase"] == "Pending" and st["reason"] == "JobCreateFailed"
            await rec.sync_experiment(NS, "flaky")
            st = await _status(c, "flaky")
            assert st["phase"] == "Pending" and st["reason"] == "Starting"
            assert {x["type"]: x["status"] for x in st["conditions"]}["JobCreated"] == "True"
            assert [j["metadata"]["name"] for j in await c.list(JOBS, NS)] == ["flaky-sparsify"]

    asyncio.run(scenario())


def test_a_stale_uid_is_ignored():
    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            await c.create(EXP, experiment("reused"))
            rec, kube, _ = _reconciler()
            await rec.sync_experiment(NS, "reused", uid="uid-of-an-older-experiment")
            await rec.sync_experiment(NS, "gone")
            assert kube.take() == [] and await c.list(JOBS, NS) == []

    asyncio.run(scenario())
