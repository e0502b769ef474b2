"""text-generation with s3:// in and out, against moto's S3 server on loopback: the tiny Llama folder and
the text are read from a bucket, the compressed-tensors folder is published with the atomic publish
(marker last, checksums), transformers reloads what landed in the bucket to the reported perplexity,
a failed run publishes nothing, and `sparsifyctl generate serve --from s3://run` recognises the
published folder (from the run's marker) as a Hugging Face model for KServe's vLLM runtime."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import FAST_ARGS, SEQUENCE, run_cli

TESTS = Path(__file__).resolve().parents[1]
for helper_dir in (TESTS / "runner_io", TESTS / "serve_k8s"):
    if str(helper_dir) not in sys.path:
        sys.path.append(str(helper_dir))

from rio_helpers import ACCESS_KEY, SECRET_KEY, free_port, http_post, keys  # noqa: E402

pytestmark = pytest.mark.timeout(600)
HF_TOKEN = "hf_TestTokenNeverLogged1234567890"


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """A pod's environment on the loopback endpoint (HF_TOKEN set as a Secret would set it)."""
    import boto3

    http_post(f"{moto_endpoint}/moto-api/reset")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "NO_PROXY": "127.0.0.1,localhost",
        "SPARSIFY_CACHE_DIR": str(tmp_path / "cache"),
        "SPARSIFY_S3_MAX_ATTEMPTS": "2",
        "SPARSIFY_NO_PROGRESS": "1",
        "HF_TOKEN": HF_TOKEN,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    for bucket in ("models", "data", "out"):
        client.create_bucket(Bucket=bucket)
    return client


def _upload_folder(s3, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _download_folder(s3, bucket: str, prefix: str, dest: Path) -> Path:
    for key in keys(s3, bucket, prefix + "/"):
        target = dest / key.removeprefix(prefix + "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    return dest


def _perplexity(folder: Path, text: str, windows: int) -> float:
    """Held-out perplexity of a folder with transformers alone (the val text + EOS, SEQUENCE windows)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.inference_mode():
        losses = [
            float(model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss)
            for w in (ids[i * SEQUENCE : (i + 1) * SEQUENCE] for i in range(windows))
        ]
    return math.exp(sum(losses) / len(losses))


def _argv(model: str, data: str, output: str, *extra: str) -> list[str]:
    return ["run", "one-shot", "--use-case", "text-generation", "--model", model, "--data", data,
            "--output", output, "--recipe-args", FAST_ARGS, *extra]


def test_s3_in_and_out_publishes_the_folder_atomically_and_serves_it(
    s3, tiny_llama, split_data, tmp_path, capsys
):
    _upload_folder(s3, tiny_llama, "models", "llm/tiny-llama")
    _upload_folder(s3, split_data, "data", "text")
    code, stdout, stderr = run_cli(
        _argv("s3://models/llm/tiny-llama/", "s3://data/text/", "s3://out/runs/llm1", "--optim-level", "1.0"),
        capsys,
    )
    assert code == 0, stderr
    published = keys(s3, "out", "runs/llm1/")
    marker = json.loads(s3.get_object(Bucket="out", Key="runs/llm1/_SUCCESS.json")["Body"].read())
    files = marker["files"]
    # exactly the marker's files plus the marker: no staging or temporary keys left behind
    assert sorted(published) == sorted([*(f"runs/llm1/{n}" for n in files), "runs/llm1/_SUCCESS.json"])
    assert {"model/config.json", "report.json", "report.html"} <= set(files)
    assert any(n.startswith("model/") and n.endswith(".safetensors") for n in files)
    assert not any(n == "model.onnx" or n.startswith("model_repository/") for n in files)
    for name, info in files.items():
        body = s3.get_object(Bucket="out", Key=f"runs/llm1/{name}")["Body"].read()
        assert len(body) == info["size"] and hashlib.sha256(body).hexdigest() == info["sha256"]

    report = json.loads(s3.get_object(Bucket="out", Key="runs/llm1/report.json")["Body"].read())
    assert report["artifacts"]["model"] == "s3://out/runs/llm1/model"
    assert report["artifacts"]["serving"] == "s3://out/runs/llm1/model"
    assert report["experiment"]["model"] == "s3://models/llm/tiny-llama/"
    config = json.loads(s3.get_object(Bucket="out", Key="runs/llm1/model/config.json")["Body"].read())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"  # W4A16 at level 1.0

    # what landed in the bucket reloads (transformers alone) to the reported perplexity
    folder = _download_folder(s3, "out", "runs/llm1/model", tmp_path / "downloaded")
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    assert _perplexity(folder, val, windows=8) == pytest.approx(report["perplexity"]["optimized"], rel=1e-3)

    # the token from the environment (a Secret in a cluster) is in no output
    everything = stdout + stderr + json.dumps(report)
    everything += s3.get_object(Bucket="out", Key="runs/llm1/report.html")["Body"].read().decode()
    assert HF_TOKEN not in everything and SECRET_KEY not in everything

    # generate serve reads the run's marker: a Hugging Face folder, served by KServe's vLLM runtime
    import kserve_schema

    missing = kserve_schema.sdk_missing()
    if missing:
        pytest.fail(missing)
    code, stdout, stderr = run_cli(["generate", "serve", "--from", "s3://out/runs/llm1"], capsys)
    assert code == 0, stderr
    isvc = yaml.safe_load(stdout)
    assert kserve_schema.validate(isvc, "V1beta1InferenceService") == []
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert model["storageUri"] == "s3://out/runs/llm1/model"
    assert "--backend=vllm" in model["args"] and model["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_bad_s3_data_fails_with_one_line_and_publishes_nothing(s3, tiny_llama, tmp_path, capsys):
    _upload_folder(s3, tiny_llama, "models", "llm/tiny-llama")
    s3.put_object(Bucket="data", Key="rows.jsonl", Body=b'{"body": "no text column here"}\n')
    code, _, stderr = run_cli(
        _argv("s3://models/llm/tiny-llama/", "s3://data/rows.jsonl", "s3://out/runs/bad"), capsys
    )
    assert code == 2
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "no 'text' column" in lines[0] and "--data" in lines[0], stderr
    assert keys(s3, "out", "runs/bad/") == []
    assert HF_TOKEN not in stderr


def test_hf_token_is_redacted_from_runner_messages(monkeypatch):
    from sparsify_runner.storage.common import redact

    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    assert redact(f"401 for token {HF_TOKEN}") == "401 for token ***"
