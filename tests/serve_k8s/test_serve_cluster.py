"""The serving URI through the real operator (kopf + handlers against kmock's Kubernetes
emulator) into status.results, then `sparsifyctl generate serve --from NS/NAME` reading it."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from op_harness import EXP, JOBS, Cluster, experiment, running_operator, wait_for
from serve_helpers import run_cli
from sparsify_runner.contract import RunSummary

pytestmark = pytest.mark.timeout(180)
NS = "ml"
NAME = "edge-detector"
SERVING = f"s3://out/{NAME}/model_repository"


def test_status_carries_serving_uri_and_generate_serve_reads_it(capsys, kserve_sdk):
    async def ctl(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(run_cli, list(argv), capsys)

    async def scenario():
        async with Cluster() as c:
            await c.secret(NS, "s3-creds")
            async with running_operator([NS]):
                exp = experiment(NAME, NS)
                exp["spec"]["experiment"]["deploy"] = {"device": "cuda", "batchSize": 8}
                await c.create(EXP, exp)

                async def job():
                    jobs = await c.list(JOBS, NS)
                    return jobs[0]["metadata"]["name"] if jobs else None

                job_name = await wait_for(job, what="the runner Job")

                code, stdout, err = await ctl("generate", "serve", "--from", f"{NS}/{NAME}")
                assert code == 2 and stdout == ""
                assert err.strip().startswith(f"error: experiment {NS}/{NAME} is Pending, not Succeeded")

                model_uri = f"s3://out/{NAME}/model.onnx"
                summary = RunSummary(status="succeeded", model_uri=model_uri, serving_uri=SERVING)
                await c.finish_job(NS, job_name, exit_code=0, message=summary.to_message())

                async def succeeded():
                    obj = await c.get(EXP, NS, NAME)
                    status = (obj or {}).get("status") or {}
                    return status if status.get("phase") == "Succeeded" else None

                status = await wait_for(succeeded, what="Succeeded")
                assert status["results"]["servingUri"] == SERVING

                code, stdout, err = await ctl("get", NAME, "-n", NS)
                assert code == 0, err
                assert f"servingUri: {SERVING}" in stdout

                code, stdout, err = await ctl("generate", "serve", "--from", f"{NS}/{NAME}")
                assert code == 0, err
                account, isvc = [d for d in yaml.safe_load_all(stdout) if d]
                assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
                assert kserve_sdk.validate(account, "V1ServiceAccount") == []
                model = isvc["spec"]["predictor"]["model"]
                assert model["modelFormat"] == {"name": "onnx"} and model["protocolVersion"] == "v2"
                assert model["storageUri"] == SERVING
                # placement follows the experiment: its namespace, its Secret and endpoint, a GPU for cuda
                assert isvc["metadata"]["name"] == NAME and isvc["metadata"]["namespace"] == NS
                assert model["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
                assert isvc["spec"]["predictor"]["serviceAccountName"] == f"{NAME}-storage"
                assert account["metadata"]["namespace"] == NS and account["secrets"] == [{"name": "s3-creds"}]
                notes = account["metadata"]["annotations"]
                assert notes["serving.kserve.io/s3-endpoint"] == "minio.storage:9000"
                assert isvc["metadata"]["annotations"]["sparsify.dev/source"] == f"{NS}/{NAME}"

                code, stdout, err = await ctl("generate", "serve", "--from", f"{NS}/{NAME}", "--gpus", "0",
                                              "--name", "edge-cpu", "--service-account", "shared-s3")
                assert code == 0, err
                # a named ServiceAccount is used as it is (it carries the Secret): no second document
                (isvc,) = [d for d in yaml.safe_load_all(stdout) if d]
                assert "resources" not in isvc["spec"]["predictor"]["model"]
                assert isvc["metadata"]["name"] == "edge-cpu"
                assert isvc["spec"]["predictor"]["serviceAccountName"] == "shared-s3"

                code, stdout, err = await ctl("generate", "serve", "--from", f"{NS}/nope")
                assert code == 2 and err.strip().startswith("error: not found")

    asyncio.run(scenario())
