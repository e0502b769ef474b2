"""text-generation on a cluster: `sparsifyctl generate` -> the CR -> the Job (GPU, model cache volume,
HF_TOKEN from a Secret), through the real CLI, the pure Job builder and the operator on kmock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from conftest import K8S_VERSION
from op_harness import EXP, JOBS, Cluster, experiment, running_operator, wait_for
from sparsify_operator.jobs import MODEL_CACHE, build_job
from sparsify_operator.models import SparsifyExperiment
from sparsify_operator.settings import OperatorSettings
from sparsify_runner.spec import load_experiment
from test_crd import _experiment_rules_pass

CTL = [sys.executable, "-c", "from sparsifyctl.cli import main; main()"]
LLM_FLAGS = [
    "--use-case",
    "text-generation",
    "--model",
    "s3://models/SmolLM2-135M-Instruct/",
    "--data",
    "s3://data/speeches/",
    "--output",
    "s3://results/smollm2",
    "--optim-level",
    "0.5",
    "--secret",
    "s3-creds",
]
UID = "11111111-2222-3333-4444-555555555555"


def _ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=60)


def _generate(*extra: str) -> dict:
    proc = _ctl("generate", "one-shot", *LLM_FLAGS, *extra)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    doc["metadata"]["namespace"] = "ml"
    doc["metadata"]["uid"] = UID
    return doc


def _pod(job: dict) -> tuple[dict, dict, dict]:
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    return pod, container, {e["name"]: e for e in container["env"]}


def test_generate_text_generation_job_gets_gpu_pvc_cache_and_token_from_secret():
    doc = _generate("--hf-token-secret", "hf-token:token", "--model-cache-pvc", "model-cache")
    cr = SparsifyExperiment.model_validate(doc)
    assert cr.spec.experiment.use_case == "text-generation"
    assert cr.spec.gpus == 1, "text-generation requests a GPU even for a cpu deploy target"
    assert doc["spec"]["hfTokenSecretRef"] == {"name": "hf-token", "key": "token"}
    assert doc["spec"]["modelCache"] == {"claimName": "model-cache"}
    assert _experiment_rules_pass(doc["spec"]["experiment"]) == []

    job = build_job(doc, OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod, container, env = _pod(job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in pod["volumes"]
    assert {"name": "model-cache", "mountPath": MODEL_CACHE} in container["volumeMounts"]
    # the s3:// download cache (where the model folder lands) and the HF cache live on that volume
    assert env["SPARSIFY_CACHE_DIR"]["value"] == f"{MODEL_CACHE}/sparsify"
    assert env["HF_HOME"]["value"] == f"{MODEL_CACHE}/huggingface"
    # the runner gets the same experiment; the spec carries a Secret name, never a token
    exp = load_experiment(container["args"][3])
    assert exp.use_case == "text-generation" and exp.model == "s3://models/SmolLM2-135M-Instruct/"
    assert "hf_" not in json.dumps(job) and "token" not in container["args"][3].lower()


def test_text_generation_without_a_claim_gets_an_emptydir_cache_sized_like_scratch():
    doc = _generate()
    doc["spec"]["resources"] = {"limits": {"ephemeralStorage": "60Gi"}}
    job = build_job(doc, OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod, container, env = _pod(job)
    assert {"name": "model-cache", "emptyDir": {"sizeLimit": "60Gi"}} in pod["volumes"]
    assert env["SPARSIFY_CACHE_DIR"]["value"] == f"{MODEL_CACHE}/sparsify"
    assert "HF_TOKEN" not in env


def test_onnx_one_shot_keeps_its_cache_in_scratch_unless_a_claim_is_named():
    cr = experiment("onnx")
    _, _, env = _pod(build_job(cr, OperatorSettings()))
    assert env["SPARSIFY_CACHE_DIR"]["value"] == "/scratch/cache" and "HF_HOME" not in env
    cr = experiment("onnx", modelCache={"claimName": "shared-models"})
    pod, _, env = _pod(build_job(cr, OperatorSettings()))
    assert env["SPARSIFY_CACHE_DIR"]["value"] == f"{MODEL_CACHE}/sparsify"
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "shared-models"}} in pod["volumes"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--hf-token-secret", "Bad_Name"],
            "spec.hfTokenSecretRef.name: String should match pattern",
        ),
        (["--model-cache-pvc", "no/slash"], "spec.modelCache.claimName: String should match pattern"),
        (["--model", "./SmolLM2"], "--model './SmolLM2' is a local path"),
    ],
)
def test_bad_llm_flags_one_line_exit_2(args, expected):
    flags = list(LLM_FLAGS)
    if args[0] == "--model":
        flags[flags.index("--model") + 1] = args[1]
        args = []
    proc = _ctl("generate", "one-shot", *flags, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    if args:
        assert f"(set with {args[0]})" in lines[0]


def test_hf_token_secret_does_not_apply_to_generate_serve():
    proc = _ctl("generate", "serve", "--from", "s3://results/smollm2", "--hf-token-secret", "hf")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --hf-token-secret does not apply to `generate serve` (it serves a finished run)"
    )


def test_operator_creates_the_llm_job_build_job_renders():
    """The operator (kopf on kmock) turns a text-generation experiment into exactly build_job's Job."""
    ns = "ml"
    spec_over = {
        "experiment": {
            "type": "one-shot",
            "useCase": "text-generation",
            "model": "s3://models/llama/",
            "data": "s3://data/text/",
            "optimLevel": 0.5,
            "output": "s3://out/llm1",
        },
        "hfTokenSecretRef": {"name": "hf-token"},
    }

    async def scenario():
        async with Cluster() as c:
            await c.secret(ns, "s3-creds")
            exp = experiment("llm1", **spec_over)
            async with running_operator([ns]):
                await c.create(EXP, exp)

                async def job():
                    jobs = await c.list(JOBS, ns)
                    return jobs[0] if jobs else None

                created = await wait_for(job, what="the LLM Job")
                assert created["spec"] == build_job(exp, OperatorSettings())["spec"]
                _, _, env = _pod(created)
                assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
                assert env["HF_HOME"]["value"] == f"{MODEL_CACHE}/huggingface"

    asyncio.run(scenario())
