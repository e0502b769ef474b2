"""Real components on loopback for the runner-I/O tests: an S3 endpoint (moto's threaded
server) and a Prometheus Pushgateway (Debian's ``prometheus-pushgateway``).

A missing component is a test FAILURE with the command that installs it, never a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest
from rio_helpers import (
    ACCESS_KEY,
    INSTALL_HINT,
    PUSHGATEWAY_BIN,
    SECRET_KEY,
    free_port,
    http_get,
    http_post,
    tiny_onnx,
)


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:  # pragma: no cover - environment problem
        pytest.fail(f"moto[server] is missing ({err}); pip install 'moto[server]' (the dev extra)")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    yield url
    server.stop()


@pytest.fixture
def s3env(moto_endpoint, monkeypatch, tmp_path):
    """Environment of a pod talking to the test S3 endpoint; a fresh cache and moto state."""
    http_post(f"{moto_endpoint}/moto-api/reset")
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
        "S3_ENDPOINT",
        "AWS_SESSION_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "SPARSIFY_METRICS_PORT",
        "SPARSIFY_PUSHGATEWAY_URL",
    ):
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
        "SPARSIFY_HTTP_MAX_ATTEMPTS": "2",
        "SPARSIFY_NO_PROGRESS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from sparsify_runner.storage.common import stats

    stats.reset()
    return env


@pytest.fixture
def s3(s3env):
    """A plain boto3 client on the test endpoint (the test's own view of the bucket)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture(scope="session")
def pushgateway(tmp_path_factory) -> str:
    """A Pushgateway on a free loopback port (no persistence); yields its base URL."""
    binary = PUSHGATEWAY_BIN if os.path.exists(PUSHGATEWAY_BIN) else None
    if binary is None and "SPARSIFY_TEST_PUSHGATEWAY" not in os.environ:
        binary = shutil.which("prometheus-pushgateway")
    if not binary:
        pytest.fail(f"prometheus-pushgateway is not installed ({PUSHGATEWAY_BIN}); {INSTALL_HINT}")
    port = free_port()
    log = tmp_path_factory.mktemp("pushgateway") / "pushgateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            http_get(f"{url}/-/ready", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"prometheus-pushgateway did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def one_shot_inputs(s3, tmp_path):
    s3.create_bucket(Bucket="models")
    s3.create_bucket(Bucket="datasets")
    s3.create_bucket(Bucket="results")
    tiny_onnx(tmp_path / "model.onnx")
    s3.upload_file(str(tmp_path / "model.onnx"), "models", "tiny/model.onnx")
    rng = np.random.default_rng(1)
    for i in range(24):
        local = tmp_path / f"sample_{i:03d}.npz"
        np.savez(local, input=rng.normal(0, 1, (3, 8, 8)).astype(np.float32))
        s3.upload_file(str(local), "datasets", f"calib/sample_{i:03d}.npz")
