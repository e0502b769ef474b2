"""Tiny models and datasets, built offline in fixtures (seconds on a 2-core CPU)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
POSITIVE = ["good", "great", "fine", "lovely", "superb", "wonderful", "brilliant", "excellent"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "boring", "dull", "horrible", "weak"]
FILLER = ["the", "movie", "film", "plot", "was", "is", "a", "and", "very", "quite", "story", "acting"]


def make_imagefolder(
    root: Path,
    *,
    per_class_train: int = 10,
    per_class_val: int = 4,
    size: int = 12,
    classes: tuple[str, ...] = ("red", "green", "blue"),
) -> Path:
    from PIL import Image

    rng = random.Random(0)
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = COLORS[cls]
                img = Image.new("RGB", (size, size))
                img.putdata(
                    [
                        tuple(max(0, min(255, c + rng.randint(-60, 60))) for c in base)
                        for _ in range(size * size)
                    ]
                )
                img.save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgdata"))


@pytest.fixture(scope="session")
def cnn_checkpoint(tmp_path_factory) -> Path:
    """A simple_cnn checkpoint dict ({'state_dict', 'arch_key'}) with a 10-class head."""
    import torch
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(0)
    model = EXTRA_ARCHS["simple_cnn"](num_classes=10)
    path = tmp_path_factory.mktemp("cnn") / "cnn.pt"
    torch.save({"state_dict": model.state_dict(), "arch_key": "simple_cnn"}, path)
    return path


def _sentence(rng: random.Random, words: list[str]) -> str:
    toks = [rng.choice(FILLER) for _ in range(rng.randint(3, 6))] + [rng.choice(words) for _ in range(2)]
    rng.shuffle(toks)
    return " ".join(toks)


def make_text_data(root: Path, *, fmt: str = "csv", n_train: int = 32, n_val: int = 12) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = [
            {"sentence": _sentence(rng, POSITIVE if i % 2 else NEGATIVE), "label": "pos" if i % 2 else "neg"}
            for i in range(n)
        ]
        if fmt == "csv":
            with open(root / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=["sentence", "label"])
                writer.writeheader()
                writer.writerows(rows)
        else:
            (root / f"{split}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
            )
    return root


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> Path:
    return make_text_data(tmp_path_factory.mktemp("textdata"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT + WordPiece tokenizer from a vocab file written here."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("bert") / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(vocab_file)).save_pretrained(str(folder))
    import torch

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


# Timing settings for test runs: the models here take microseconds, so short benchmark and INT8
# candidate windows measure them well enough, and the tests' other assertions do not depend on them.
FAST_TIMINGS = {"benchmark_seconds": 0.3, "int8_candidate_seconds": 0.15}


def with_fast_timings(args: tuple[str, ...]) -> list[str]:
    """``sparsifyctl run ...`` arguments with ``FAST_TIMINGS`` merged into ``--recipe-args``
    (a key the test sets itself wins); other commands unchanged."""
    args = list(args)
    if len(args) < 2 or args[0] != "run" or args[1] not in ("training-aware", "sparse-transfer"):
        return args
    if "--recipe-args" in args:
        i = args.index("--recipe-args") + 1
        given = json.loads(args[i])
        if isinstance(given, dict):
            args[i] = json.dumps({**FAST_TIMINGS, **given})
        return args
    return [*args, "--recipe-args", json.dumps(FAST_TIMINGS)]


def sparsifyctl(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes, stderr lines)."""
    cmd = [sys.executable, "-c", "from sparsifyctl.cli import main; main()", *with_fast_timings(args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def runner(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from sparsify_runner.cli import main; main()", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"},
    )


def sparsifyctl_in_process(args: list[str], capsys) -> tuple[int, str]:
    """The real ``sparsifyctl`` entry point in this process: (exit code, stderr). For input
    errors, where a subprocess adds only its start-up time."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, capsys.readouterr().err
