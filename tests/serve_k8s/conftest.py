"""Fixtures for the KServe hand-off tests: tiny ONNX models built with onnx.helper, npz samples,
the moto S3 server on loopback, the real ``sparsifyctl`` in-process, and Triton's model-config
schema (from the installed tritonclient) to parse ``config.pbtxt`` with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
# reuse the operator harness (kmock emulator) and the runner-I/O helpers
for helper_dir in (HERE.parent / "operator", HERE.parent / "runner_io"):
    if str(helper_dir) not in sys.path:
        sys.path.append(str(helper_dir))

from rio_helpers import ACCESS_KEY, SECRET_KEY, free_port, http_post  # noqa: E402
from serve_helpers import tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def static_onnx(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models") / "static.onnx")


@pytest.fixture(scope="session")
def calib(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(24):
        np.savez(folder / f"s{i:03d}.npz", input=rng.standard_normal((3, 8, 8)).astype(np.float32))
    return folder


@pytest.fixture(scope="session")
def triton_config():
    """Triton's ModelConfig protobuf (tritonclient ships model_config_pb2; its grpc package
    needs grpcio, so the generated module is loaded from its file)."""
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.fail(f"{path} is missing; pip install 'tritonclient[http]' (the dev extra)")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from google.protobuf import text_format

    def parse(text: str):
        return text_format.Parse(text, module.ModelConfig())

    parse.module = module
    return parse


@pytest.fixture
def kserve_sdk():
    import kserve_schema

    missing = kserve_schema.sdk_missing()
    if missing:
        pytest.fail(missing)
    return kserve_schema


@pytest.fixture
def no_storage_env(monkeypatch):
    """A laptop with no object storage configured (generation must work offline)."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:  # pragma: no cover - environment problem
        pytest.fail(f"moto[server] is missing ({err}); pip install 'moto[server]' (the dev extra)")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """The environment of a pod talking to the loopback S3 endpoint, and the test's own client."""
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
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
