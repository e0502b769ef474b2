"""`sparsifyctl generate serve` for a text-generation run: KServe's Hugging Face runtime (vLLM backend)
on the compressed-tensors folder, validated against KServe 0.21.0's SDK types; offline from an s3://
URI, and from a finished experiment through the operator on kmock. (The marker-based detection of a
real published run is tested in tests/llm/test_s3_and_serve.py.)"""

from __future__ import annotations

import asyncio

import pytest
import yaml
from op_harness import EXP, JOBS, Cluster, experiment, running_operator, wait_for
from serve_helpers import run_cli
from sparsify_runner.contract import RunSummary

RUN = "s3://results/runs/smollm2"


def _isvc(stdout: str) -> dict:
    docs = [d for d in yaml.safe_load_all(stdout) if d]
    return docs[-1]


def _check_hf(isvc: dict, storage_uri: str, name: str, backend: str) -> dict:
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUri"] == storage_uri
    assert "protocolVersion" not in model  # the HF server's default: v1 + the OpenAI-compatible routes
    assert model["args"][0] == f"--model_name={name}" and f"--backend={backend}" in model["args"]
    return model


def test_offline_from_the_model_folder_is_a_valid_vllm_inference_service(no_storage_env, capsys, kserve_sdk):
    code, stdout, err = run_cli(["generate", "serve", "--from", f"{RUN}/model/", "-n", "ml"], capsys)
    assert code == 0, err
    isvc = _isvc(stdout)
    assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
    model = _check_hf(isvc, f"{RUN}/model", "smollm2", "vllm")
    assert model["resources"] == {"limits": {"nvidia.com/gpu": "1"}}, "vLLM needs a GPU: one by default"
    assert "runtime" not in model  # KServe picks its Hugging Face runtime for modelFormat huggingface
    assert isvc["metadata"]["name"] == "smollm2" and isvc["metadata"]["namespace"] == "ml"


def test_runtime_flag_marks_a_run_prefix_as_text_generation_and_gpus_0_uses_transformers(
    no_storage_env, capsys, kserve_sdk
):
    argv = ["generate", "serve", "--from", RUN, "--runtime", "kserve-huggingfaceserver", "--gpus", "0",
            "--secret", "s3-creds", "--name", "chat"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    account, isvc = [d for d in yaml.safe_load_all(stdout) if d]
    assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
    assert kserve_sdk.validate(account, "V1ServiceAccount") == []
    model = _check_hf(isvc, f"{RUN}/model", "chat", "huggingface")
    assert model["runtime"] == "kserve-huggingfaceserver" and "resources" not in model
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "chat-storage"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--from", f"{RUN}/model", "--runtime", "kserve-tritonserver"],
         "error: --runtime 'kserve-tritonserver' cannot serve a Hugging Face model folder"),
        (["--from", "gs://b/run/model"], "error: --from 'gs://b/run/model' must be NAMESPACE/EXPERIMENT"),
    ],
)
def test_bad_llm_serve_flags_one_line_exit_2(no_storage_env, capsys, argv, message):
    code, stdout, err = run_cli(["generate", "serve", *argv], capsys)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


@pytest.mark.timeout(180)
def test_finished_llm_experiment_serves_its_model_folder(capsys, kserve_sdk):
    ns, name = "ml", "smollm2-chat"
    folder = f"s3://out/{name}/model"

    async def ctl(*argv: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(run_cli, list(argv), capsys)

    async def scenario():
        async with Cluster() as c:
            await c.secret(ns, "s3-creds")
            async with running_operator([ns]):
                exp = experiment(name, ns)
                exp["spec"]["experiment"].update(
                    {"useCase": "text-generation", "model": "s3://models/smollm2/", "data": "s3://data/text/"}
                )
                await c.create(EXP, exp)

                async def job():
                    jobs = await c.list(JOBS, ns)
                    return jobs[0]["metadata"]["name"] if jobs else None

                job_name = await wait_for(job, what="the runner Job")
                summary = RunSummary(status="succeeded", model_uri=folder, serving_uri=folder)
                await c.finish_job(ns, job_name, exit_code=0, message=summary.to_message())

                async def succeeded():
                    obj = await c.get(EXP, ns, name)
                    status = (obj or {}).get("status") or {}
                    return status if status.get("phase") == "Succeeded" else None

                status = await wait_for(succeeded, what="Succeeded")
                assert status["results"]["servingUri"] == folder
                code, stdout, err = await ctl("generate", "serve", "--from", f"{ns}/{name}")
                assert code == 0, err
                account, isvc = [d for d in yaml.safe_load_all(stdout) if d]
                assert kserve_sdk.validate(isvc, "V1beta1InferenceService") == []
                model = _check_hf(isvc, folder, name, "vllm")
                assert model["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
                assert account["secrets"] == [{"name": "s3-creds"}]
                assert isvc["metadata"]["namespace"] == ns

    asyncio.run(scenario())
