"""A tiny random Llama with a byte-level tokenizer and a few pages of text, built here (nothing
downloaded), for the text-generation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SEQUENCE = 32
# Small enough for seconds per run on 2 cores; widths 96 (hidden) and 160 (MLP) are not multiples of
# 128 or 64, so the 4-bit group size must be chosen (32) as for SmolLM2 (576 -> 64).
HIDDEN, INTERMEDIATE = 96, 160
FAST_ARGS = '{"sequence_length": 32, "calibration_samples": 8, "eval_samples": 8}'


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<s>"], vocab["</s>"] = len(vocab), len(vocab) + 1
    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<s>", eos_token="</s>")


def corpus(seed: int, sentences: int = 400) -> str:
    """Pseudo-English with structure a model can learn (repeated phrases), different per seed."""
    import random

    rng = random.Random(seed)
    subjects = ["the model", "a layer", "the weight", "our team", "the cluster", "each token"]
    verbs = ["reads", "writes", "rounds", "measures", "keeps", "moves"]
    objects = ["the scale", "a window", "the budget", "every group", "the text", "its error"]
    return " ".join(
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(sentences)
    )


def train_tiny(model, tokenizer, text: str, steps: int = 60) -> None:
    """A few optimizer steps so the model is not uniform noise (quantization then has something to lose)."""
    import torch

    ids = torch.tensor(tokenizer(text)["input_ids"])
    n = len(ids) // SEQUENCE
    windows = ids[: n * SEQUENCE].view(n, SEQUENCE)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~20x faster than two on a busy 2-core machine
    model.train()
    try:
        for _ in range(steps):
            batch = windows[torch.randint(0, n, (16,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def build_tiny_llama(folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    train_tiny(model, tokenizer, corpus(1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama")


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(corpus(2), encoding="utf-8")
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The real ``sparsifyctl`` entry point in-process: (exit code, stdout, stderr)."""
    from sparsifyctl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else (0 if exc.value.code is None else 1)
    return code, out.out, out.err


def one_shot(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "one-shot",
        "--use-case",
        "text-generation",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--recipe-args",
        FAST_ARGS,
        *extra,
    ]


@pytest.fixture(scope="session")
def split_data(tmp_path_factory) -> Path:
    """train.txt (calibration) and val.txt (held-out) from different seeds: separate sources."""
    root = tmp_path_factory.mktemp("split")
    (root / "train.txt").write_text(corpus(3), encoding="utf-8")
    (root / "val.txt").write_text(corpus(4), encoding="utf-8")
    return root


def independent_perplexity(folder: Path, val_text: str, windows: int) -> float:
    """Perplexity of a saved folder on the first held-out windows, computed without the product's code:
    the val text's tokens plus end-of-sequence, cut into SEQUENCE-token windows."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(val_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    losses = []
    with torch.inference_mode():
        for i in range(windows):
            window = torch.tensor([ids[i * SEQUENCE : (i + 1) * SEQUENCE]])
            losses.append(float(model(input_ids=window, labels=window).loss))
    return math.exp(sum(losses) / len(losses))
