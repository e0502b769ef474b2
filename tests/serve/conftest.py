"""Tiny ONNX models (built with onnx.helper: a linear layer, so outputs are checkable with
numpy) and an in-process server: uvicorn in a thread on a free loopback port."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) @ W + B


def linear_onnx(path: Path, batch: int | str = "batch", metadata: dict[str, str] | None = None) -> Path:
    """y = x @ W + B with x: FP32 [batch, 4], y: FP32 [batch, 3]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "linear",
        [x],
        [y],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def linear_model(tmp_path_factory) -> Path:
    return linear_onnx(tmp_path_factory.mktemp("serve-models") / "linear.onnx")


@pytest.fixture(scope="session")
def static_model(tmp_path_factory) -> Path:
    return linear_onnx(tmp_path_factory.mktemp("serve-static") / "static.onnx", batch=1)


@dataclass
class Running:
    url: str
    """http://127.0.0.1:PORT"""
    host: str
    """127.0.0.1:PORT (what tritonclient wants)"""
    app: object
    name: str


@contextlib.contextmanager
def serving(
    source: str | Path, *, task: str | None = None, name: str | None = None, **app_kwargs
) -> Iterator[Running]:
    """The real app and uvicorn server (the ones ``sparsifyctl serve`` runs), in a thread."""
    from sparsify_runner.serve.app import create_app
    from sparsify_runner.serve.model import load, resolve
    from sparsify_runner.serve.server import bind, make_server
    from sparsify_runner.serve.task import make_task

    model = load(resolve(str(source), name), threads=1)
    app = create_app(model, task=make_task(task, model) if task else None, **app_kwargs)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(app, graceful_timeout_s=10)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", app, model.name)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def load_benchmark():
    """benchmarks/serve_load.py as a module (the tests run its load generator, bounded)."""
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# ---- tiny training inputs (the pattern of tests/training/conftest.py) ----------------------
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
POSITIVE = ["good", "great", "fine", "lovely", "superb", "wonderful"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull"]
FILLER = ["the", "movie", "film", "plot", "was", "is", "a", "and", "very"]


def make_imagefolder(root: Path, *, per_class_train: int = 4, per_class_val: int = 2, size: int = 12) -> Path:
    import random

    from PIL import Image

    rng = random.Random(0)
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        for cls, base in COLORS.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = Image.new("RGB", (size, size))
                img.putdata(
                    [
                        tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in base)
                        for _ in range(size * size)
                    ]
                )
                img.save(folder / f"{i}.png")
    return root


def cnn_checkpoint(path: Path) -> Path:
    import torch
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(0)
    model = EXTRA_ARCHS["simple_cnn"](num_classes=10)
    torch.save({"state_dict": model.state_dict(), "arch_key": "simple_cnn"}, path)
    return path


def make_text_data(root: Path, n_train: int = 16, n_val: int = 6) -> Path:
    import csv
    import random

    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["sentence", "label"])
            writer.writeheader()
            for i in range(n):
                words = [rng.choice(FILLER) for _ in range(4)] + [
                    rng.choice(POSITIVE if i % 2 else NEGATIVE)
                ] * 2
                rng.shuffle(words)
                writer.writerow({"sentence": " ".join(words), "label": "pos" if i % 2 else "neg"})
    return root


def tiny_bert(folder: Path) -> Path:
    """A 1-layer, hidden-16 BERT with a WordPiece tokenizer from a vocab written here."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


def run_main(argv: list[str]) -> int:
    """``sparsifyctl`` in-process: its exit code."""
    from sparsifyctl.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def s3_bucket(monkeypatch, tmp_path):
    """A moto S3 server on loopback (the pattern of tests/runner_io) with bucket 'models';
    the runner's storage module reads its endpoint and credentials from the environment."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT", "AWS_SESSION_TOKEN", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing-key",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "NO_PROXY": "127.0.0.1,localhost",
        "SPARSIFY_CACHE_DIR": str(tmp_path / "cache"),
        "SPARSIFY_NO_PROGRESS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="models")
    yield client
    server.stop()
