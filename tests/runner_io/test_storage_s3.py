"""storage against a real S3 endpoint (moto server on loopback): downloads, cache,
checksums, atomic publish, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rio_helpers import keys
from sparsify_runner import storage
from sparsify_runner.errors import TransientError
from sparsify_runner.storage import s3 as s3mod
from sparsify_runner.storage.common import stats


def test_fetch_object_then_cache_hit(s3, s3env):
    s3.create_bucket(Bucket="models")
    s3.put_object(Bucket="models", Key="resnet/model.onnx", Body=b"onnx-bytes" * 1000)

    path = storage.fetch("s3://models/resnet/model.onnx", what="model")
    assert path.name == "model.onnx"
    assert path.read_bytes() == b"onnx-bytes" * 1000
    assert Path(s3env["SPARSIFY_CACHE_DIR"]) in path.parents
    assert stats.get("downloaded_objects") == 1 and stats.get("cache_hits") == 0

    again = storage.fetch("s3://models/resnet/model.onnx", what="model")
    assert again == path
    assert stats.get("downloaded_objects") == 1 and stats.get("cache_hits") == 1

    # A changed object (new ETag) is downloaded again.
    s3.put_object(Bucket="models", Key="resnet/model.onnx", Body=b"new-model")
    assert storage.fetch("s3://models/resnet/model.onnx", what="model").read_bytes() == b"new-model"
    assert stats.get("downloaded_objects") == 2


def test_fetch_prefix_as_folder_reuses_unchanged_files(s3):
    s3.create_bucket(Bucket="data")
    for i in range(6):
        s3.put_object(Bucket="data", Key=f"calib/sub/sample_{i}.npz", Body=f"sample-{i}".encode() * 100)
    s3.put_object(Bucket="data", Key="calib/labels.json", Body=b"{}")
    s3.put_object(Bucket="data", Key="calibration-other/x", Body=b"not part of calib/")

    folder = storage.fetch("s3://data/calib/", what="data")
    assert folder.is_dir()
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == ["labels.json"] + [f"sub/sample_{i}.npz" for i in range(6)]
    assert (folder / "sub/sample_3.npz").read_bytes() == b"sample-3" * 100
    assert stats.get("downloaded_objects") == 7

    # Same prefix without the trailing slash: same folder from the cache.
    assert storage.fetch("s3://data/calib", what="data") == folder
    assert stats.get("downloaded_objects") == 7

    s3.put_object(Bucket="data", Key="calib/sub/sample_0.npz", Body=b"changed")
    folder = storage.fetch("s3://data/calib/", what="data")
    assert (folder / "sub/sample_0.npz").read_bytes() == b"changed"
    assert stats.get("downloaded_objects") == 8  # only the changed object


def test_multipart_upload_and_checksum_verified_download(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSIFY_S3_MULTIPART_THRESHOLD_MB", "5")
    s3.create_bucket(Bucket="out")
    big = tmp_path / "staging" / "model.onnx"
    big.parent.mkdir()
    big.write_bytes(bytes(range(256)) * (11 * 4096))  # 11 MiB -> 3 parts of >= 5 MiB
    out = storage.OutputLocation("s3://out/run1")
    out.publish(big.parent, fingerprint="fp")
    head = s3.head_object(Bucket="out", Key="run1/model.onnx")
    assert "-" in head["ETag"], "expected a multipart upload"
    assert (
        head["Metadata"]["sha256"]
        == json.loads(s3.get_object(Bucket="out", Key="run1/_SUCCESS.json")["Body"].read())["files"][
            "model.onnx"
        ]["sha256"]
    )

    got = storage.fetch("s3://out/run1/model.onnx", what="model")
    assert got.read_bytes() == big.read_bytes()

    # A multipart object whose bytes do not match the recorded sha256 is rejected.
    from boto3.s3.transfer import TransferConfig

    s3.upload_file(
        str(big),
        "out",
        "run1/bad.onnx",
        ExtraArgs={"Metadata": {"sha256": "0" * 64}},
        Config=TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20),
    )
    assert "-" in s3.head_object(Bucket="out", Key="run1/bad.onnx")["ETag"]
    with pytest.raises(TransientError, match="sha256 does not match"):
        storage.fetch("s3://out/run1/bad.onnx", what="model")


def test_md5_etag_mismatch_is_detected(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"hello")
    obj = {"size": 5, "etag": "0" * 32, "key": "k", "bucket": "b"}
    with pytest.raises(TransientError, match="MD5 does not match"):
        s3mod._verify(f, obj, "s3://b/k")
    obj["etag"] = "5d41402abc4b2a76b9719d911017c592"  # md5("hello")
    s3mod._verify(f, obj, "s3://b/k")
    with pytest.raises(TransientError, match="expected 6"):
        s3mod._verify(f, {**obj, "size": 6}, "s3://b/k")


def _staging(tmp_path: Path) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"optimized-model")
    (staging / "report.json").write_text('{"ok": true}')
    (staging / "plots").mkdir()
    (staging / "plots" / "latency.svg").write_text("<svg/>")
    return staging


def test_publish_is_atomic_with_marker_last(s3, tmp_path):
    s3.create_bucket(Bucket="out")
    out = storage.OutputLocation("s3://out/exp/")
    published = out.publish(_staging(tmp_path), order=["model.onnx", "report.json"], fingerprint="abc")
    assert published["model.onnx"] == "s3://out/exp/model.onnx"
    assert keys(s3, "out") == [
        "exp/_SUCCESS.json",
        "exp/model.onnx",
        "exp/plots/latency.svg",
        "exp/report.json",
    ], "staging prefix must be cleaned up"
    marker = json.loads(s3.get_object(Bucket="out", Key="exp/_SUCCESS.json")["Body"].read())
    assert marker["experimentFingerprint"] == "abc"
    assert marker["files"]["model.onnx"]["size"] == len(b"optimized-model")
    assert len(marker["files"]["report.json"]["sha256"]) == 64
    assert out.completed("abc") is not None
    assert out.completed("other-spec") is None
    # A listed file gone -> not complete.
    s3.delete_object(Bucket="out", Key="exp/plots/latency.svg")
    assert out.completed("abc") is None


def test_interrupted_upload_publishes_nothing(s3, tmp_path, monkeypatch):
    s3.create_bucket(Bucket="out")
    real_upload = s3mod.S3Store.upload
    calls = []

    def flaky(self, path, name, sha256=None, show=None):
        calls.append(name)
        if len(calls) == 2:
            raise TransientError(f"upload '{self.uri_for(name)}': connection reset; try again")
        return real_upload(self, path, name, sha256, show)

    monkeypatch.setattr(s3mod.S3Store, "upload", flaky)
    out = storage.OutputLocation("s3://out/exp")
    with pytest.raises(TransientError):
        out.publish(_staging(tmp_path), order=["model.onnx", "report.json"], fingerprint="abc")
    assert keys(s3, "out") == [], "no marker, no model.onnx, no staging leftovers"
    assert out.completed("abc") is None


def test_interrupted_copy_retracts_previous_marker(s3, tmp_path, monkeypatch):
    s3.create_bucket(Bucket="out")
    out = storage.OutputLocation("s3://out/exp")
    out.publish(_staging(tmp_path), fingerprint="old")
    assert out.completed("old")

    def broken_copy(self, src, dst):
        raise TransientError("copy failed")

    monkeypatch.setattr(s3mod.S3Store, "copy", broken_copy)
    staging = tmp_path / "new"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"new")
    with pytest.raises(TransientError):
        out.publish(staging, fingerprint="new")
    assert "exp/_SUCCESS.json" not in keys(s3, "out")
    assert out.completed("old") is None and out.completed("new") is None
    assert not [k for k in keys(s3, "out") if ".sparsify-staging" in k]


def test_local_publish_writes_marker(tmp_path):
    out = storage.OutputLocation(str(tmp_path / "result"))
    out.publish(_staging(tmp_path), order=["model.onnx", "report.json"], fingerprint="fp1")
    root = tmp_path / "result"
    assert sorted(p.name for p in root.iterdir()) == ["_SUCCESS.json", "model.onnx", "plots", "report.json"]
    assert out.completed("fp1")["files"]["plots/latency.svg"]["size"] == 6
    assert out.read_text("report.json") == '{"ok": true}'


def test_checkpoints_roundtrip_through_s3(s3, s3env, tmp_path, monkeypatch):
    s3.create_bucket(Bucket="out")
    out = storage.OutputLocation("s3://out/exp")
    ckpt = out.checkpoint_dir
    assert ckpt.is_dir() and not list(ckpt.iterdir())
    (ckpt / "train.pt").write_bytes(b"epoch-3-state")
    out.save_checkpoints()
    assert keys(s3, "out", "exp/.sparsify-checkpoints/") == [
        "exp/.sparsify-checkpoints/_CHECKPOINT.json",
        "exp/.sparsify-checkpoints/train.pt",
    ]

    # A preempted pod's replacement: new process, empty cache.
    monkeypatch.setenv("SPARSIFY_CACHE_DIR", str(tmp_path / "cache-of-the-next-pod"))
    resumed = storage.OutputLocation("s3://out/exp")
    assert (resumed.checkpoint_dir / "train.pt").read_bytes() == b"epoch-3-state"

    (resumed.checkpoint_dir / "train.pt").unlink()
    (resumed.checkpoint_dir / "qat.pt").write_bytes(b"qat")
    resumed.save_checkpoints()
    assert keys(s3, "out", "exp/.sparsify-checkpoints/") == [
        "exp/.sparsify-checkpoints/_CHECKPOINT.json",
        "exp/.sparsify-checkpoints/qat.pt",
    ]
    resumed.clear_checkpoints()
    assert keys(s3, "out", "exp/.sparsify-checkpoints/") == []
