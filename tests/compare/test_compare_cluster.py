"""``sparsifyctl compare NS/NAME`` against kmock's Kubernetes emulator: an experiment's
``status.results.reportUri`` is read from S3, a sweep expands to its points."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # tests/operator/op_harness.py
from op_harness import EXP, Cluster, experiment  # noqa: E402

from .conftest import run_cli  # noqa: E402
from .reports import make_report  # noqa: E402

pytestmark = pytest.mark.timeout(180)
NS = "ml"
SWEEPS = "sparsify.dev/v1alpha1/sparsifysweeps"


async def _sweep_resource(c: Cluster) -> None:
    import kmock

    c.k.resources[SWEEPS] = kmock.ResourceInfo(
        kind="SparsifySweep",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        subresources={"status"},
        singular="sparsifysweep",
    )


def test_cluster_experiment_and_sweep(s3, capsys):
    s3.create_bucket(Bucket="out")
    s3.put_object(
        Bucket="out",
        Key="exp1/report.json",
        Body=make_report("unstructured", level=0.7).model_dump_json().encode(),
    )
    s3.put_object(
        Bucket="out",
        Key="sw/sw-050-c/report.json",
        Body=make_report("channels", level=0.5).model_dump_json().encode(),
    )

    async def cli(*argv: str) -> tuple[int, str, str]:
        # the emulator serves from this event loop: run the in-process CLI in a thread
        return await asyncio.to_thread(run_cli, ["compare", *argv], capsys)

    async def scenario():
        async with Cluster() as c:
            await _sweep_resource(c)
            await c.create(EXP, experiment("exp1", NS))
            results = {"reportUri": "s3://out/exp1/report.json", "speedup": 2.0}
            await c.patch(
                EXP, NS, "exp1", {"status": {"phase": "Succeeded", "results": results}}, sub="status"
            )
            await c.create(EXP, experiment("exp2", NS))
            await c.patch(EXP, NS, "exp2", {"status": {"phase": "Running"}}, sub="status")
            sweep = {
                "apiVersion": "sparsify.dev/v1alpha1",
                "kind": "SparsifySweep",
                "metadata": {"name": "sw", "namespace": NS, "resourceVersion": "1"},
                "spec": {},
            }
            await c.create(SWEEPS, sweep)
            points = [
                {
                    "name": "sw-050-c",
                    "optimLevel": 0.5,
                    "structure": "channels",
                    "phase": "Succeeded",
                    "reportUri": "s3://out/sw/sw-050-c/report.json",
                },
                {
                    "name": "sw-090-c",
                    "optimLevel": 0.9,
                    "structure": "channels",
                    "phase": "Failed",
                    "message": "OOMKilled",
                },
                {"name": "sw-020-c", "optimLevel": 0.2, "structure": "channels", "phase": "Running"},
            ]
            await c.patch(SWEEPS, NS, "sw", {"status": {"phase": "Running", "points": points}}, sub="status")

            code, stdout, stderr = await cli(f"{NS}/exp1", f"{NS}/exp2", f"{NS}/sw", "--json")
            assert code == 0, stderr
            runs = json.loads(stdout)["runs"]
            assert [(r["label"], r["phase"]) for r in runs] == [
                ("ml/exp1", "Succeeded"),
                ("ml/exp2", "Running"),
                ("sw-050-c", "Succeeded"),
                ("sw-090-c", "Failed"),
                ("sw-020-c", "Running"),
            ]
            assert runs[0]["source"] == "s3://out/exp1/report.json"
            assert runs[0]["headline"]["optimLevel"] == 0.7
            assert runs[1]["report"] is None and "Running" in runs[1]["error"]
            assert runs[2]["headline"]["mode"] == "channels" and runs[2]["details"]["sweep"] == "ml/sw"
            assert runs[3]["error"] == "OOMKilled"

            code, stdout, stderr = await cli(f"{NS}/exp1", f"{NS}/sw")
            assert code == 0, stderr
            assert "ml/exp1" in stdout and "sw-050-c" in stdout and "OOMKilled" in stdout

            code, stdout, stderr = await cli(f"{NS}/nope")
            assert code == 2 and stdout == ""
            assert stderr.strip() == (
                "error: 'ml/nope' is not a local path, and no SparsifyExperiment or SparsifySweep 'nope' "
                "exists in namespace 'ml'; check the name with `sparsifyctl list -n ml`"
            )

    asyncio.run(scenario())
