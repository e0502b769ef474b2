"""`--data` for text-generation beyond plain text, end to end through `sparsifyctl run one-shot`:
`messages` and `prompt` (+ `completion`) rows rendered through the tokenizer's chat template, and
`datasets` save_to_disk folders (a DatasetDict with train/validation splits, or one Dataset). The
reported dense perplexity is recomputed here from the rendered text with transformers alone, so a
run that skipped the template (or read the wrong split) fails. Bad data: one line, exit 2."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from .conftest import SEQUENCE, corpus, one_shot, run_cli
from .test_cli import _assert_bad

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WINDOWS = 8  # FAST_ARGS' eval_samples


@pytest.fixture(scope="module")
def chat_llama(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with a chat template in its tokenizer."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat") / "chat-llama"
    shutil.copytree(tiny_llama, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def _conversations(seed: int, n: int = 40) -> list[list[dict[str, str]]]:
    sentences = corpus(seed, sentences=4 * n).split(". ")
    return [
        [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": sentences[4 * i] + "?"},
            {"role": "assistant", "content": sentences[4 * i + 1] + ". " + sentences[4 * i + 2] + "."},
        ]
        for i in range(n)
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rendered_ids(folder: Path, conversations: list[list[dict[str, str]]]) -> list[int]:
    """The conversations through the template, tokenized, one EOS between documents (the template's own)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids: list[int] = []
    for conv in conversations:
        text = "".join(f"<|{m['role']}|>\n{m['content']}</s>" for m in conv)  # TEMPLATE, by hand
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert ids[-1] == tokenizer.eos_token_id  # the template closes each turn with </s>
    return ids


def _perplexity(folder: Path, windows: list[list[int]]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        losses = [float(model(input_ids=torch.tensor([w]), labels=torch.tensor([w])).loss) for w in windows]
    return math.exp(sum(losses) / len(losses))


def _cut(ids: list[int]) -> list[list[int]]:
    return [ids[i * SEQUENCE : (i + 1) * SEQUENCE] for i in range(len(ids) // SEQUENCE)]


def _run(model: Path, data: Path, out: Path, capsys) -> dict:
    code, _, stderr = run_cli(one_shot(model, data, out, "--optim-level", "0"), capsys)
    assert code == 0, stderr
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_messages_rows_go_through_the_chat_template(chat_llama, tmp_path, capsys):
    data = tmp_path / "chat"
    data.mkdir()
    train, val = _conversations(5), _conversations(6)
    _write_jsonl(data / "train.jsonl", [{"messages": c} for c in train])
    _write_jsonl(data / "val.jsonl", [{"messages": c} for c in val])
    rep = _run(chat_llama, data, tmp_path / "out", capsys)
    assert rep["data"]["sources"]["held_out"].endswith("val.jsonl")
    expected = _perplexity(chat_llama, _cut(_rendered_ids(chat_llama, val))[:WINDOWS])
    assert rep["perplexity"]["baseline"] == pytest.approx(expected, rel=1e-3)


def test_prompt_and_completion_csv_through_the_chat_template(chat_llama, tmp_path, capsys):
    convs = _conversations(7, n=60)
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        for c in convs:
            writer.writerow({"prompt": c[1]["content"], "completion": c[2]["content"]})
    rep = _run(chat_llama, path, tmp_path / "out", capsys)
    windows = _cut(_rendered_ids(chat_llama, [c[1:] for c in convs]))  # user + assistant, no system turn
    held = windows[len(windows) - min(WINDOWS, len(windows) // 2) :]
    assert rep["data"]["sources"]["held_out"] == f"{path} (last windows)"
    assert rep["perplexity"]["baseline"] == pytest.approx(_perplexity(chat_llama, held), rel=1e-3)


def test_save_to_disk_dataset_dict_uses_its_train_and_validation_splits(tiny_llama, tmp_path, capsys):
    import datasets
    from transformers import AutoTokenizer

    texts = {name: corpus(seed).split(". ") for name, seed in (("train", 8), ("validation", 9), ("test", 10))}
    folder = tmp_path / "saved"
    splits = {name: {"text": rows, "id": list(range(len(rows)))} for name, rows in texts.items()}
    datasets.DatasetDict({name: datasets.Dataset.from_dict(d) for name, d in splits.items()}).save_to_disk(
        str(folder)
    )
    rep = _run(tiny_llama, folder, tmp_path / "out", capsys)
    assert rep["data"]["sources"] == {
        "calibration": f"{folder} [split train]",
        "held_out": f"{folder} [split validation]",
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids: list[int] = []
    for text in texts["validation"]:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    expected = _perplexity(tiny_llama, _cut(ids)[:WINDOWS])
    assert rep["perplexity"]["baseline"] == pytest.approx(expected, rel=1e-3)


def test_save_to_disk_dataset_of_messages_is_one_source(chat_llama, tmp_path, capsys):
    import datasets

    folder = tmp_path / "one"
    datasets.Dataset.from_list([{"messages": c} for c in _conversations(11, n=60)]).save_to_disk(str(folder))
    rep = _run(chat_llama, folder, tmp_path / "out", capsys)
    assert rep["data"]["sources"]["held_out"] == f"{folder} (last windows)"
    assert rep["data"]["held_out_windows"] == WINDOWS


# ---- bad data: one line naming --data, exit 2, nothing published ------------------------------------------


def test_chat_rows_need_a_chat_template(tiny_llama, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in _conversations(12)])
    _assert_bad(
        one_shot(tiny_llama, data, tmp_path / "out"),
        capsys,
        "--data",
        "'messages' column",
        "tokenizer has none",
        "chat_template",
        out=tmp_path / "out",
    )


@pytest.mark.parametrize(
    "messages",
    ['"just a string"', '[{"role": "narrator", "content": "hi"}]', '[{"role": "user"}]', "[]"],
)
def test_malformed_messages(chat_llama, tmp_path, capsys, messages):
    rows = [{"messages": c} for c in _conversations(13, n=3)]
    path = tmp_path / "chat.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"messages": ' + messages + "}\n", encoding="utf-8"
    )
    _assert_bad(
        one_shot(chat_llama, path, tmp_path / "out"),
        capsys,
        "--data",
        "row 4",
        "must be a list of",
        out=tmp_path / "out",
    )


def test_save_to_disk_problems(tiny_llama, tmp_path, capsys):
    import datasets

    rows = corpus(14).split(". ")
    odd = tmp_path / "odd-splits"
    datasets.DatasetDict(
        {"a": datasets.Dataset.from_dict({"text": rows}), "b": datasets.Dataset.from_dict({"text": rows})}
    ).save_to_disk(str(odd))
    out = tmp_path / "out"
    _assert_bad(one_shot(tiny_llama, odd, out), capsys, "--data", "splits a, b", "train", out=out)
    nocol = tmp_path / "no-text"
    datasets.Dataset.from_dict({"body": rows}).save_to_disk(str(nocol))
    _assert_bad(one_shot(tiny_llama, nocol, out), capsys, "--data", "no 'text' column", "body", out=out)
