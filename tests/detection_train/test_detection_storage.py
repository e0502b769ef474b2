"""Detection runs with remote inputs and a base-model catalog, through ``sparsifyctl run``:
a YOLO dataset, a checkpoint and the output all on s3:// (moto on loopback), and
sparse-transfer without --model choosing a detector from the catalog by optim level."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml
from det_helpers import run_args

pytestmark = pytest.mark.slow


def _run(args: list[str], capsys) -> None:
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None), capsys.readouterr().err[-3000:]


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_url, monkeypatch, tmp_path):
    import boto3

    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "NO_PROXY": "127.0.0.1,localhost",
        "SPARSIFY_CACHE_DIR": str(tmp_path / "cache"),
    }
    for key in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")


def test_training_aware_with_s3_data_model_and_output(det_data, yolo_checkpoint, s3, capsys):
    for bucket in ("datasets", "models", "results"):
        s3.create_bucket(Bucket=bucket)
    root = Path(det_data.root)
    for path in sorted(root.rglob("*")):
        if path.is_file() and "annotations" not in path.parts:
            s3.upload_file(str(path), "datasets", f"digits/{path.relative_to(root).as_posix()}")
    s3.upload_file(str(yolo_checkpoint), "models", "yolo/model.pt")
    args = run_args(
        "training-aware",
        "s3://models/yolo/model.pt",
        "s3://datasets/digits/",
        "s3://results/od-run",
        "--optim-level",
        "0.2",
        "--train-kwargs",
        json.dumps({"epochs": 1, "batch_size": 16}),
    )
    _run([str(a) for a in args], capsys)
    names = {o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="od-run/")["Contents"]}
    assert {"od-run/model.onnx", "od-run/report.json", "od-run/model.pt"} <= names
    report = json.loads(s3.get_object(Bucket="results", Key="od-run/report.json")["Body"].read())
    assert report["mode"] == "quantization-only" and report["settings"]["layout"] == "yolo"
    assert report["baseline"]["map"] is not None and report["optimized"]["map"] is not None


def test_sparse_transfer_picks_a_detector_from_the_catalog(det_data, yolo_checkpoint, tmp_path, capsys):
    """Two detection entries (dense, 60% sparse) and a classifier entry: the optim level walks
    the detection entries from the largest to the sparsest."""
    ckpt = torch.load(yolo_checkpoint, weights_only=True)
    for key, value in ckpt["state_dict"].items():
        if key.endswith(".weight") and value.dim() == 4 and value.numel() >= 256:
            cut = value.abs().flatten().kthvalue(int(value.numel() * 0.6)).values
            ckpt["state_dict"][key] = torch.where(value.abs() <= cut, torch.zeros_like(value), value)
    torch.save(ckpt, tmp_path / "pruned.pt")
    (tmp_path / "dense.pt").write_bytes(Path(yolo_checkpoint).read_bytes())
    params = sum(v.numel() for v in ckpt["state_dict"].values())
    catalog = {
        "version": 1,
        "models": [
            {
                "name": "yolo-pico-dense",
                "useCase": "object-detection",
                "uri": "dense.pt",
                "parameters": params,
            },
            {
                "name": "yolo-pico-pruned60",
                "useCase": "object-detection",
                "uri": "pruned.pt",
                "parameters": params,
                "sparsity": 0.6,
            },
            {"name": "a-classifier", "useCase": "image-classification", "uri": "dense.pt", "parameters": 1},
        ],
    }
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    out = tmp_path / "out"
    args = run_args(
        "sparse-transfer",
        None,
        det_data.root,
        out,
        "--optim-level",
        "0.9",
        "--catalog",
        str(tmp_path / "catalog.yaml"),
        "--train-kwargs",
        json.dumps({"epochs": 1, "batch_size": 16}),
        recipe={"quantize": False},
    )
    _run(args, capsys)
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["catalog_entry"] == "yolo-pico-pruned60"
    assert settings["catalog_candidates"] == ["yolo-pico-dense", "yolo-pico-pruned60"]
    assert settings["base_sparsity"] > 0.4 and report["mode"] == "unstructured"
    assert report["optimized"]["map"] is not None
