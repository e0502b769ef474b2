"""training-aware and sparse-transfer for ``--use-case text-generation`` on the tiny Llama, end to
end through ``sparsifyctl run``: perplexity before/after in report.json, the sparsity GMP reached,
the mask held by sparse-transfer, the saved folder reloading with transformers to the reported
perplexity (recomputed without the product's code), and bad input as one line + exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import SEQUENCE, independent_perplexity, run_cli

WINDOWS = 8
TRAIN_KWARGS = json.dumps(
    {"max_length": SEQUENCE, "epochs": 2, "batch_size": 8, "lr": 1e-3, "max_train_samples": 32}
)


def _train(pathway: str, model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        pathway,
        "--use-case",
        "text-generation",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--train-kwargs",
        TRAIN_KWARGS,
        "--val-samples",
        str(WINDOWS),
        *extra,
    ]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def _linear_zeros(folder: Path) -> dict[str, object]:
    """Masks (weight == 0) of every Linear weight but lm_head, read with transformers (a
    compressed-tensors folder decompressed to float weights)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    config = json.loads((folder / "config.json").read_text())
    extra = (
        {"quantization_config": CompressedTensorsConfig(run_compressed=False)}
        if "quantization_config" in config
        else {}
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra)
    return {
        name: (module.weight.detach() == 0)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }


def _sparsity(masks: dict) -> float:
    zeros = sum(int(m.sum()) for m in masks.values())
    return zeros / sum(m.numel() for m in masks.values())


@pytest.fixture(scope="module")
def gmp_run(tiny_llama, split_data, tmp_path_factory) -> tuple[int, Path]:
    """training-aware at level 0.5 with a 50% target and no quantization (the pruned folder ships)."""
    from sparsifyctl.cli import main

    out = tmp_path_factory.mktemp("ta") / "out"
    argv = _train(
        "training-aware",
        tiny_llama,
        split_data,
        out,
        "--optim-level",
        "0.5",
        "--recipe-args",
        json.dumps({"sparsity": 0.5, "quantize": False}),
    )
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code or 0, out


def test_training_aware_prunes_distils_and_ships_a_folder_that_reloads(gmp_run, split_data):
    code, out = gmp_run
    assert code == 0
    rep = _report(out)
    assert rep["mode"] == "unstructured"
    settings = rep["settings"]
    assert settings["target_sparsity"] == 0.5 and settings["quantized"] is None
    assert settings["perplexity_before_training"] == rep["perplexity"]["baseline"]
    # GMP reached its target on every pruned layer (lm_head stays dense), in the saved folder itself
    masks = _linear_zeros(out / "model")
    assert _sparsity(masks) == pytest.approx(0.5, abs=0.01)
    assert settings["pruned_weight_sparsity"] == pytest.approx(_sparsity(masks), abs=1e-6)
    for name, mask in masks.items():
        assert float(mask.float().mean()) == pytest.approx(0.5, abs=0.02), name
    # an epoch record per epoch, with held-out perplexity and the growing sparsity
    epochs = [r for r in rep["training"] if r["phase"] == "main"]
    assert len(epochs) == 2 and all(r["val_perplexity"] > 1 for r in epochs)
    assert epochs[-1]["sparsity"] > 0.3
    assert any("distillation teacher: the input model" in n for n in rep["notes"])
    # transformers alone gets the reported perplexity from the published folder and the input model
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    ppl = rep["perplexity"]
    assert independent_perplexity(out / "model", val, windows=WINDOWS) == pytest.approx(
        ppl["optimized"], rel=1e-3
    )
    assert ppl["reloaded"] == pytest.approx(ppl["optimized"], rel=1e-3)
    assert ppl["optimized"] == settings["perplexity_after_training"]
    assert (out / "model" / "tokenizer.json").is_file() and not (out / "model.onnx").exists()


def test_sparse_transfer_keeps_the_mask_of_the_pruned_model(
    gmp_run, tiny_llama, split_data, tmp_path, capsys
):
    """The pruned folder of training-aware is the sparse input: every zero stays zero, the rest trains."""
    code, pruned_out = gmp_run
    assert code == 0
    pruned = pruned_out / "model"
    before = _linear_zeros(pruned)
    out = tmp_path / "st"
    code, _, stderr = run_cli(
        _train(
            "sparse-transfer",
            pruned,
            split_data,
            out,
            "--optim-level",
            "0.5",
            "--recipe-args",
            '{"quantize": false}',
        ),
        capsys,
    )
    assert code == 0, stderr
    rep = _report(out)
    assert rep["mode"] == "unstructured"
    assert rep["settings"]["base_sparsity"] == pytest.approx(_sparsity(before), abs=1e-6)
    after = _linear_zeros(out / "model")
    for name, mask in before.items():
        assert bool((after[name] | ~mask).all()), f"{name}: a pruned weight came back"
    assert _sparsity(after) == pytest.approx(_sparsity(before), abs=1e-4)  # nor did training add zeros
    import torch
    from safetensors.torch import load_file

    old, new = (
        load_file(str(pruned / "model.safetensors")),
        load_file(str(out / "model" / "model.safetensors")),
    )
    moved = [k for k in old if k.endswith("proj.weight") and not torch.equal(old[k], new[k])]
    assert moved, "fine-tuning changed no weight"
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    assert independent_perplexity(out / "model", val, windows=WINDOWS) == pytest.approx(
        rep["perplexity"]["optimized"], rel=1e-3
    )


def test_training_aware_then_quantization_choice(tiny_llama, split_data, tmp_path, capsys):
    """Level 1.0 (budget +25%; the 95% target lowered to 25% here): the fine-tuned model goes through
    the one-shot choice; the shipped folder is what the choice says and pruned weights stay zero."""
    out = tmp_path / "q"
    code, _, stderr = run_cli(
        _train(
            "training-aware",
            tiny_llama,
            split_data,
            out,
            "--optim-level",
            "1.0",
            "--recipe-args",
            '{"sparsity": 0.25}',
        ),
        capsys,
    )
    assert code == 0, stderr
    rep = _report(out)
    policy = rep["policy"]
    assert policy["search_space"] == ["w4a16", "w8a16"]
    built = [c for c in rep["candidates"] if c["perplexity"] is not None]
    assert built and built[0]["name"] == "w4a16"
    for c in built:
        assert c["within_budget"] == (c["accuracy_drop"] <= policy["quantization_budget"] + 1e-12)
        assert c["sparsity"] >= 0.24  # round-to-nearest kept the pruned zeros
    chosen = [c for c in built if c["chosen"]]
    config = json.loads((out / "model" / "config.json").read_text())
    if chosen:
        assert policy["chosen"] == chosen[0]["name"] == rep["settings"]["quantized"]
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        assert rep["perplexity"]["optimized"] == chosen[0]["perplexity"]
        assert _sparsity(_linear_zeros(out / "model")) >= 0.24  # the zeros survive the compressed folder
    else:
        assert "quantization_config" not in config and "ships unquantized" in policy["reason"]
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    assert independent_perplexity(out / "model", val, windows=WINDOWS) == pytest.approx(
        rep["perplexity"]["optimized"], rel=1e-3
    )


def test_channels_removes_head_groups_and_mlp_channels_and_reloads(tiny_llama, split_data, tmp_path, capsys):
    """--structure channels at level 0.5: every layer keeps the same heads/channels count, so the saved
    config describes the smaller model and transformers reloads it to the reported perplexity."""
    out = tmp_path / "ch"
    code, _, stderr = run_cli(
        _train(
            "training-aware",
            tiny_llama,
            split_data,
            out,
            "--optim-level",
            "0.5",
            "--structure",
            "channels",
            "--recipe-args",
            '{"quantize": false}',
        ),
        capsys,
    )
    assert code == 0, stderr
    rep = _report(out)
    settings = rep["settings"]
    assert rep["mode"] == "channels"
    reduction = settings["target_macs_reduction"]
    assert 0.3 < reduction < 0.75
    before, after = settings["widths_before"], settings["widths_after"]
    assert before == {"kv_heads": 2, "heads": 4, "head_dim": 24, "intermediate": 160}
    assert after["heads"] < before["heads"] and after["intermediate"] < before["intermediate"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert (
        config["num_attention_heads"] == after["heads"]
        and config["intermediate_size"] == after["intermediate"]
    )
    assert config["num_key_value_heads"] == after["kv_heads"] and config["hidden_size"] == 96
    # MACs per token of the decoder layers' Linear layers, from the saved shapes
    from safetensors.torch import load_file

    weights = load_file(str(out / "model" / "model.safetensors"))

    def layer_macs(tensors) -> int:
        return sum(
            w.numel()
            for k, w in tensors.items()
            if k.startswith("model.layers.0.") and k.endswith("proj.weight")
        )

    dense = layer_macs(load_file(str(tiny_llama / "model.safetensors")))
    assert layer_macs(weights) / dense == pytest.approx(settings["layer_macs_kept"], abs=1e-6)
    assert settings["layer_macs_kept"] == pytest.approx(1 - reduction, abs=0.1)
    assert rep["optimized"]["parameters"] < rep["baseline"]["parameters"]
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    assert independent_perplexity(out / "model", val, windows=WINDOWS) == pytest.approx(
        rep["perplexity"]["optimized"], rel=1e-3
    )


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        ("bert", (), "not a causal language model"),
        ("gpt2", ("--structure", "channels"), "Llama-family layouts"),
        ("llama", ("--recipe-args", '{"qat": true}'), "qat"),
        ("llama", ("--recipe-args", '{"sparsity": 2}'), "sparsity"),
        ("llama", ("--eval-metric", "f1"), "--eval-metric"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(make, extra, message, tiny_llama, split_data, tmp_path, capsys):
    model = {
        "llama": lambda: tiny_llama,
        "bert": lambda: _bert(tmp_path / "bert"),
        "gpt2": lambda: _gpt2(tmp_path / "gpt2"),
    }[make]()
    capsys.readouterr()  # building the BERT folder printed a progress bar
    out = tmp_path / "out"
    code, _, stderr = run_cli(_train("training-aware", model, split_data, out, *extra), capsys)
    assert code == 2
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], stderr
    assert not (out / "report.json").exists() and not (out / "model").exists()


def _gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from .conftest import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    from .conftest import byte_tokenizer

    config = BertConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder
