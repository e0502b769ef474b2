"""End to end through ``sparsifyctl run one-shot --use-case text-generation`` on a tiny Llama built
in the tests: what ships, what the report says, that transformers reloads the folder to the
reported perplexity, and one line + exit 2 for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import FAST_ARGS, SEQUENCE, independent_perplexity, one_shot, run_cli


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _check_choice(rep: dict) -> dict | None:
    """The shipped candidate is the first (most compressed) within budget; those before it are over."""
    budget = rep["policy"]["max_perplexity_increase"]
    built = [c for c in rep["candidates"] if c["perplexity"] is not None]
    assert [c["name"] for c in built] == rep["policy"]["search_space"][: len(built)]
    chosen = [c for c in built if c["chosen"]]
    for c in built:
        assert c["within_budget"] == (c["accuracy_drop"] <= budget + 1e-12)
        lo, hi = c["accuracy_drop_interval"]
        assert lo <= c["accuracy_drop"] <= hi
        lo, hi = c["perplexity_interval"]
        assert lo <= c["perplexity"] <= hi
    if chosen:
        index = built.index(chosen[0])
        assert chosen[0]["within_budget"] and not any(c["within_budget"] for c in built[:index])
        assert built[-1] is chosen[0]  # nothing less compressed was built after the choice
        return chosen[0]
    assert not any(c["within_budget"] for c in built)
    return None


def test_level_05_cpu_ships_compressed_tensors_that_reload_to_the_same_perplexity(
    tiny_llama, split_data, tmp_path, capsys
):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(one_shot(tiny_llama, split_data, out, "--optim-level", "0.5"), capsys)
    assert code == 0, stderr
    rep = _report(out)
    assert rep["experiment"]["useCase"] == "text-generation"
    assert rep["policy"]["max_perplexity_increase"] == pytest.approx(0.05)
    assert rep["policy"]["search_space"] == ["w4a16", "w8a16"]
    assert rep["settings"]["group_size"] == 32  # 96 and 160 reject 128 and 64
    assert any("group size 32, not 128" in n for n in rep["notes"])
    assert rep["data"]["held_out_windows"] == 8 and rep["data"]["calibration_windows"] == 8
    assert rep["data"]["sources"]["held_out"].endswith("val.txt")
    chosen = _check_choice(rep)
    ppl = rep["perplexity"]
    folder = out / "model"
    assert rep["artifacts"]["model"] == str(folder)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert not (out / "model.onnx").exists()
    if chosen is not None:
        config = json.loads((folder / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        assert rep["optimized"]["file_size_bytes"] < rep["baseline"]["file_size_bytes"]
        assert ppl["optimized"] == chosen["perplexity"] and rep["mode"] == "quantization-only"
    # transformers alone, on the same held-out windows, gets the reported perplexity
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    again = independent_perplexity(folder, val, windows=8)
    assert again == pytest.approx(ppl["optimized"], rel=1e-3)
    assert ppl["reloaded"] == pytest.approx(ppl["optimized"], rel=1e-3)
    dense = independent_perplexity(tiny_llama, val, windows=8)
    assert dense == pytest.approx(ppl["baseline"], rel=1e-3)
    assert "perplexity" in stdout and "model:" in stdout


def test_level_0_ships_the_dense_weights_byte_for_byte(tiny_llama, text_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = run_cli(one_shot(tiny_llama, text_file, out, "--optim-level", "0"), capsys)
    assert code == 0, stderr
    rep = _report(out)
    assert rep["mode"] == "baseline" and rep["candidates"] == [] and rep["policy"]["chosen"] is None
    assert (out / "model" / "model.safetensors").read_bytes() == (
        tiny_llama / "model.safetensors"
    ).read_bytes()
    assert rep["perplexity"]["increase"] == 0.0
    assert rep["data"]["sources"]["held_out"].endswith("(last windows)")


def test_cuda_target_at_02_measures_smoothquant_w8a8(tiny_llama, split_data, tmp_path, capsys):
    """vLLM's 8-bit scheme (SmoothQuant + GPTQ, dynamic per-token activations) runs on CPU too; the
    reloaded folder applies the same activation quantization, so the perplexity matches."""
    out = tmp_path / "out"
    argv = one_shot(tiny_llama, split_data, out, "--optim-level", "0.2", "--deploy-device", "cuda")
    code, _, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    rep = _report(out)
    assert rep["policy"]["search_space"] == ["w8a8"]
    (cand,) = rep["candidates"]
    assert "SmoothQuant" in cand["scheme"]
    _check_choice(rep)
    if cand["chosen"]:
        config = json.loads((out / "model" / "config.json").read_text())
        group = config["quantization_config"]["config_groups"]["group_0"]
        assert group["input_activations"]["dynamic"] is True and group["weights"]["num_bits"] == 8
    assert rep["perplexity"]["reloaded"] == pytest.approx(rep["perplexity"]["optimized"], rel=1e-3)


def test_size_objective_measures_sparsity_and_says_it_buys_no_speed(tiny_llama, split_data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = one_shot(
        tiny_llama,
        split_data,
        out,
        "--optim-level",
        "1.0",
        "--objective",
        "size",
        "--recipe-args",
        json.dumps({**json.loads(FAST_ARGS), "schemes": ["sparse50-w4a16"]}),
    )
    code, _, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    rep = _report(out)
    (cand,) = rep["candidates"]
    assert cand["name"] == "sparse50-w4a16" and cand["sparsity"] >= 0.45
    assert any("buys no speed" in n for n in rep["notes"])
    _check_choice(rep)


def test_max_accuracy_drop_zero_keeps_the_baseline_unless_a_candidate_costs_nothing(
    tiny_llama, split_data, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = one_shot(tiny_llama, split_data, out, "--optim-level", "1", "--max-accuracy-drop", "0")
    code, _, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    rep = _report(out)
    assert rep["policy"]["budget_source"] == "--max-accuracy-drop"
    chosen = _check_choice(rep)
    assert (chosen is None) == (rep["mode"] == "baseline")
    assert rep["perplexity"]["increase"] <= 1e-12


# ---- bad input: one line naming the flag, exit 2, nothing published --------------------------------------
def _assert_bad(argv, capsys, *expected: str, out: Path) -> None:
    capsys.readouterr()  # what building the inputs printed
    code, _, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_not_a_causal_lm(tmp_path, text_file, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "bert"
    BertForSequenceClassification(
        BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(folder)
    out = tmp_path / "out"
    _assert_bad(
        one_shot(folder, text_file, out),
        capsys,
        "--model",
        "BertForSequenceClassification",
        "not a causal language model",
        out=out,
    )


def test_pickled_weights_are_refused(tmp_path, tiny_llama, text_file, capsys):
    import shutil

    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    out = tmp_path / "out"
    _assert_bad(
        one_shot(folder, text_file, out), capsys, "--model", "pytorch_model.bin", "never loaded", out=out
    )
    _assert_bad(one_shot(folder / "pytorch_model.bin", text_file, out), capsys, "--model", "pickled", out=out)


@pytest.mark.parametrize("content", [b"not a gguf at all", b"GGUF\x03\x00\x00\x00" + b"\x00" * 64])
def test_unreadable_gguf(tmp_path, text_file, capsys, content):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    out = tmp_path / "out"
    _assert_bad(one_shot(path, text_file, out), capsys, "--model", "GGUF", out=out)


def test_text_shorter_than_one_sequence(tmp_path, tiny_llama, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short " * 3, encoding="utf-8")  # 30 bytes: under two 32-token windows
    out = tmp_path / "out"
    _assert_bad(
        one_shot(tiny_llama, short, out), capsys, "--data", "tokens", f"sequence_length {SEQUENCE}", out=out
    )
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.txt").write_text("long enough " * 100, encoding="utf-8")
    (split / "val.txt").write_text("tiny", encoding="utf-8")
    _assert_bad(
        one_shot(tiny_llama, split, out), capsys, "--data", "val.txt", "shorter than one window", out=out
    )


def test_rows_without_a_text_column(tmp_path, tiny_llama, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"body": "hello"}\n', encoding="utf-8")  # prompt/messages rows: tests/llm/test_data.py
    out = tmp_path / "out"
    _assert_bad(one_shot(tiny_llama, data, out), capsys, "--data", "no 'text' column", out=out)


def test_bad_recipe_args(tmp_path, tiny_llama, text_file, capsys):
    out = tmp_path / "out"
    argv = one_shot(tiny_llama, text_file, out)
    argv[argv.index("--recipe-args") + 1] = '{"sequence_lenght": 64}'
    _assert_bad(argv, capsys, "--recipe-args", "sequence_lenght", out=out)
    argv[argv.index("--recipe-args") + 1] = '{"group_size": 100}'
    _assert_bad(argv, capsys, "--recipe-args", "group_size", out=out)
