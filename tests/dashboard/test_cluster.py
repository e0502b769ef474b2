"""``--cluster``: apply an experiment from the form and watch it live on the list, against the
kmock Kubernetes emulator (tests/operator/op_harness.py); a SparsifySweep and its points."""

from __future__ import annotations

import asyncio
import html
import re
import sys
from pathlib import Path

import kmock
import pytest
import yaml
from compare.conftest import moto_endpoint, s3  # noqa: F401  (fixtures reused)
from fastapi.testclient import TestClient
from sparsify_operator.kube import Kube, load_configuration
from sparsify_operator.models import GROUP, VERSION
from sparsify_operator.sweep_models import SWEEP_KIND, SWEEP_PLURAL
from sparsifyctl.dashboard.app import create_app
from sparsifyctl.dashboard.sources import ClusterTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from op_harness import EXP, VERBS, Cluster, experiment  # noqa: E402

pytestmark = pytest.mark.timeout(120)
NS = "ml"
SWEEPS = f"{GROUP}/{VERSION}/{SWEEP_PLURAL}"
FORM = {
    "experiment_type": "one-shot",
    "use_case": "ic",
    "model": "s3://models/m.onnx",
    "data": "s3://data/calib/",
    "output": "s3://out/dash-exp",
    "optim_level": "0.5",
    "name": "dash-exp",
    "gpus": "0",
    "secret": "s3-creds",
    "action": "apply",
}


def _text(page: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>(.*?)</(?:pre|div|p)>', page, re.S)
    assert m, f"no #{element_id} in the page"
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()


def _row(page: str, key: str) -> str:
    assert f'data-key="{key}"' in page, f"{key} not listed"
    return page.split(f'data-key="{key}"', 1)[1].split("</tr>", 1)[0]


def test_apply_from_the_form_then_follow_it_live():
    async def scenario():
        async with Cluster() as c:
            c.k.resources[SWEEPS] = kmock.ResourceInfo(
                kind=SWEEP_KIND, namespaced=True, verbs=VERBS, subresources={"status"}
            )
            kube = Kube(load_configuration())
            client = TestClient(
                create_app([], ClusterTarget(kube=kube, namespace=NS), None), base_url="http://127.0.0.1"
            )

            async def get(path: str):
                return await asyncio.to_thread(client.get, path)

            async def post(path: str, data: dict):
                return await asyncio.to_thread(client.post, path, data=data)

            empty = await get("/")
            assert empty.status_code == 200 and 'id="no-runs"' in empty.text

            resp = await post("/new", FORM)
            assert resp.status_code == 200, resp.text
            assert "Created" in _text(resp.text, "applied")
            shown = yaml.safe_load(_text(resp.text, "manifest"))
            created = await c.get(EXP, NS, "dash-exp")
            assert created is not None and created["spec"] == shown["spec"]
            assert created["spec"]["experiment"]["optimLevel"] == 0.5 and created["spec"]["gpus"] == 0

            listed = (await get("/")).text
            assert "phase-Pending" in _row(listed, f"k8s/{NS}/dash-exp")
            assert 'data-live="1"' in listed and 'data-refresh="10"' in listed  # auto-refresh while running

            # the operator (simulated) finishes it: the next page load shows the new phase and results
            results = {
                "mode": "unstructured",
                "speedup": 1.8,
                "optimizedLatencyMs": 2.5,
                "sparsity": 0.6,
                "baselineAccuracy": 0.9,
                "optimizedAccuracy": 0.89,
            }
            await c.patch(
                EXP, NS, "dash-exp", {"status": {"phase": "Succeeded", "results": results}}, sub="status"
            )
            listed = (await get("/")).text
            row = _row(listed, f"k8s/{NS}/dash-exp")
            assert "phase-Succeeded" in row and "1.80x" in row and "2.50 ms" in row and "90.0% → 89.0%" in row
            assert 'data-live="0"' in listed

            run = await get(f"/runs/k8s/{NS}/dash-exp")
            assert run.status_code == 200 and "1.80x" in run.text
            assert "no report yet" in run.text.lower()  # no reportUri published: said, not faked

            again = await post("/new", FORM)
            assert again.status_code == 409
            assert "already exists" in _text(again.text, "error-name")

            # a sweep and its points (status as the sweep operator writes it)
            sweep = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": SWEEP_KIND,
                "metadata": {"name": "sw1", "namespace": NS, "resourceVersion": "1"},
                "spec": {"template": created["spec"], "optimLevels": [0.2, 0.5]},
            }
            await c.create(SWEEPS, sweep)
            points = [
                {
                    "name": "sw1-020-u",
                    "optimLevel": 0.2,
                    "structure": "unstructured",
                    "phase": "Succeeded",
                    "speedup": 1.3,
                    "latencyMs": 3.1,
                },
                {"name": "sw1-050-u", "optimLevel": 0.5, "structure": "unstructured", "phase": "Running"},
            ]
            await c.patch(
                SWEEPS,
                NS,
                "sw1",
                {"status": {"phase": "Running", "summary": "1/2 succeeded", "points": points}},
                sub="status",
            )
            listed = (await get("/")).text
            row = _row(listed, f"k8s-sweep/{NS}/sw1")
            assert "phase-Running" in row and "1/2 succeeded" in row
            page = await get(f"/sweeps/k8s-sweep/{NS}/sw1")
            assert page.status_code == 200
            assert f'href="/runs/k8s/{NS}/sw1-020-u"' in page.text and "1.30x" in page.text
            assert "phase-Running" in page.text

    asyncio.run(scenario())


def test_a_finished_cluster_run_shows_its_published_report(s3, runs_root):  # noqa: F811
    s3.create_bucket(Bucket="out")
    s3.put_object(
        Bucket="out", Key="done/report.json", Body=(runs_root / "pruned" / "report.json").read_bytes()
    )

    async def scenario():
        async with Cluster() as c:
            kube = Kube(load_configuration())
            client = TestClient(
                create_app([], ClusterTarget(kube=kube, namespace=NS), None), base_url="http://127.0.0.1"
            )
            obj = experiment("done", NS)
            await c.create(EXP, obj)
            status = {
                "phase": "Succeeded",
                "results": {"speedup": 1.1, "reportUri": "s3://out/done/report.json"},
            }
            await c.patch(EXP, NS, "done", {"status": status}, sub="status")
            run = await asyncio.to_thread(client.get, f"/runs/k8s/{NS}/done")
            assert run.status_code == 200 and f'src="/report/k8s/{NS}/done"' in run.text
            doc = await asyncio.to_thread(client.get, f"/report/k8s/{NS}/done")
            assert doc.status_code == 200 and 'id="summary"' in doc.text and "pruned" in doc.text
            cmp = await asyncio.to_thread(client.get, f"/compare.html?run=k8s/{NS}/done")
            assert cmp.status_code == 200 and "<svg" in cmp.text

    asyncio.run(scenario())
