"""Fixtures for the report.html / compare tests: a moto S3 server on loopback (the pattern of
tests/runner_io/conftest.py) and the one-shot test models (imported from tests/oneshot)."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from oneshot.conftest import samples, tiny_onnx  # noqa: F401  (session fixtures reused)

ACCESS_KEY = "AKIATESTCOMPARE00001"
SECRET_KEY = "cmp-s3cr3t-Never-Logged-2b7e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """A fresh moto state, the environment a user's shell would have, and the test's own client."""
    req = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", data=b"", method="POST")
    urllib.request.urlopen(req, timeout=10).close()  # loopback only
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
        "S3_ENDPOINT",
        "AWS_SESSION_TOKEN",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
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
        "SPARSIFY_NO_PROGRESS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The real ``sparsifyctl`` entry point in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.out, out.err
