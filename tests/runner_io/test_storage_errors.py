"""The errors users hit with object storage: one line naming the URI and the fix, the
right exit code, and never a credential in the text."""

from __future__ import annotations

import logging

import pytest
from botocore.exceptions import ClientError
from rio_helpers import ACCESS_KEY, SECRET_KEY, free_port, http_post
from sparsify_runner import storage
from sparsify_runner.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, InputError, TransientError
from sparsify_runner.storage import s3 as s3mod
from sparsify_runner.storage.common import redact


def _clean(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    assert SECRET_KEY not in text and ACCESS_KEY not in text
    return text


def test_missing_bucket(s3env):
    with pytest.raises(InputError) as info:
        storage.fetch("s3://no-such-bucket/model.onnx", what="model")
    text = _clean(info.value)
    assert "s3://no-such-bucket/model.onnx" in text and "does not exist" in text
    assert "AWS_ENDPOINT_URL" in text
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_missing_key(s3):
    s3.create_bucket(Bucket="models")
    with pytest.raises(InputError) as info:
        storage.fetch("s3://models/typo/model.onnx", what="model")
    text = _clean(info.value)
    assert text.startswith("model 's3://models/typo/model.onnx': no such object or prefix")


def test_missing_output_bucket_fails_before_any_work(s3env):
    out = storage.OutputLocation("s3://missing-output/exp")
    with pytest.raises(InputError, match="bucket 'missing-output' does not exist"):
        out.check()


def test_connection_refused_is_transient_after_retries(s3env, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with pytest.raises(TransientError) as info:
        storage.fetch("s3://models/model.onnx", what="model")
    text = _clean(info.value)
    assert dead in text and "cannot connect" in text and "AWS_ENDPOINT_URL" in text
    assert info.value.exit_code == EXIT_TRANSIENT


def test_kserve_style_endpoint_variables(s3env, monkeypatch, s3):
    """S3_ENDPOINT (host:port) + S3_USE_HTTPS=0, as KServe's storage initializer reads them."""
    s3.create_bucket(Bucket="kserve")
    s3.put_object(Bucket="kserve", Key="m.onnx", Body=b"m")
    host = s3env["AWS_ENDPOINT_URL"].removeprefix("http://")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("S3_ENDPOINT", host)
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    monkeypatch.setenv("S3_VERIFY_SSL", "0")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert s3mod.endpoint_url() == f"http://{host}"
    assert storage.fetch("s3://kserve/m.onnx", what="model").read_bytes() == b"m"
    cfg = s3mod.client().meta.config
    assert cfg.s3["addressing_style"] == "path" and s3mod.client().meta.region_name == "eu-west-1"


@pytest.fixture
def enforced_auth(s3env, s3):
    """Turn on moto's IAM enforcement with one read-only user; yield its keys."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=s3env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    s3.create_bucket(Bucket="private")
    s3.put_object(Bucket="private", Key="model.onnx", Body=b"m")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="read-models",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],'
        '"Resource":"arn:aws:s3:::models/*"}]}',
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    http_post(f"{s3env['AWS_ENDPOINT_URL']}/moto-api/reset-auth", b"0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        http_post(f"{s3env['AWS_ENDPOINT_URL']}/moto-api/reset-auth", b"inf")


def test_invalid_credentials(enforced_auth, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    with pytest.raises(InputError) as info:
        storage.fetch("s3://private/model.onnx", what="model")
    text = _clean(info.value)
    assert "AKIAUNKNOWNKEY000000" not in text
    assert "credentials" in text and "s3://private/model.onnx" in text


def test_access_denied(enforced_auth, monkeypatch):
    key_id, secret = enforced_auth
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(InputError) as info:
        storage.fetch("s3://private/model.onnx", what="model")
    text = str(info.value)
    assert secret not in text and key_id not in text
    assert "access denied" in text and "s3://private/model.onnx" in text


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        ("ExpiredToken", InputError, "expired"),
        ("InvalidAccessKeyId", InputError, "rejected"),
        ("SlowDown", TransientError, "try again"),
        ("NoSuchBucket", InputError, "does not exist"),
    ],
)
def test_error_mapping(code, kind, words, s3env):
    err = ClientError({"Error": {"Code": code, "Message": f"token {SECRET_KEY}"}}, "GetObject")
    mapped = s3mod.translate(err, "s3://b/k", "download")
    assert isinstance(mapped, kind) and words in str(mapped)
    assert SECRET_KEY not in str(mapped)


def test_redaction(monkeypatch, caplog):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    text = (
        f"failed with {SECRET_KEY} at https://user:pa55@host/x and "
        "https://b.s3.amazonaws.com/m.onnx?X-Amz-Credential=AKIA1%2F&X-Amz-Signature=abc"
    )
    clean = redact(text)
    assert SECRET_KEY not in clean and "pa55" not in clean and "X-Amz-Signature" not in clean
    assert "https://***@host/x" in clean and "https://b.s3.amazonaws.com/m.onnx?<redacted>" in clean

    from sparsify_runner.storage.common import RedactingFilter

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "secret is %s", (SECRET_KEY,), None)
    RedactingFilter().filter(record)
    assert SECRET_KEY not in record.getMessage()


def test_output_without_write_access(enforced_auth, monkeypatch, tmp_path):
    key_id, secret = enforced_auth
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    out = storage.OutputLocation("s3://private/results")
    with pytest.raises(InputError) as info:
        out.check()
    assert "access denied" in str(info.value) and "write" in str(info.value)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"m")
    with pytest.raises(InputError) as info:
        out.publish(staging, fingerprint="fp")
    text = str(info.value)
    assert "access denied" in text and "s3://private/results/.sparsify-staging/" in text
    assert secret not in text
