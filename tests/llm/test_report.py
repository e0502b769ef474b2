"""The text-generation report through `sparsifyctl run one-shot --use-case text-generation`: greedy
generations of the dense and the shipped model (recomputed here with transformers alone from the
saved folders), and the LLM section of report.html (perplexity with intervals, the choice, disk
size, candidates measured and not built, generations side by side, every value escaped)."""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path

import pytest

from .conftest import SEQUENCE, one_shot

PROMPT_TOKENS = NEW_TOKENS = 16


def _greedy(folder: Path, prompt: list[int]) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def llm_run(tiny_llama, split_data, tmp_path_factory):
    """Level 1.0 for vLLM: W4A16 is built first and ships when within +25%; W8A8 is then not built."""
    out = tmp_path_factory.mktemp("report") / "out"
    from sparsifyctl.cli import main  # the real entry point (module scope: no capsys)

    argv = one_shot(tiny_llama, split_data, out, "--optim-level", "1.0", "--deploy-device", "cuda")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code in (0, None)
    return out


def test_generations_are_the_models_own_greedy_continuations(llm_run, tiny_llama, split_data):
    from transformers import AutoTokenizer

    rep = json.loads((llm_run / "report.json").read_text(encoding="utf-8"))
    gen = rep["generations"]
    assert gen["prompt_tokens"] == PROMPT_TOKENS and gen["max_new_tokens"] == NEW_TOKENS
    # the prompts: the first 16 tokens of held-out windows 0, 4 and 7 (of 8), val.txt + EOS cut in windows
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    val = (split_data / "val.txt").read_text(encoding="utf-8")
    ids = tokenizer(val, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompts = [ids[w * SEQUENCE : w * SEQUENCE + PROMPT_TOKENS] for w in (0, 4, 7)]
    assert [s["prompt"] for s in gen["samples"]] == [tokenizer.decode(p) for p in prompts]
    shipped = llm_run / "model"
    assert json.loads((shipped / "config.json").read_text())["quantization_config"]  # a compressed model
    for sample, prompt in zip(gen["samples"], prompts, strict=True):
        assert sample["dense"] == _greedy(tiny_llama, prompt)
        assert sample["shipped"] == _greedy(shipped, prompt)
        assert sample["same"] == (sample["first_difference"] is None)
        if sample["dense"] != sample["shipped"]:
            assert not sample["same"]
    assert gen["same"] == sum(s["same"] for s in gen["samples"])
    assert any(n.startswith("greedy generations (3 held-out prompts") for n in rep["notes"])
    assert rep["timings_s"]["generations"] > 0


def test_report_html_has_the_llm_section(llm_run):
    rep = json.loads((llm_run / "report.json").read_text(encoding="utf-8"))
    html = (llm_run / "report.html").read_text(encoding="utf-8")
    section = re.search(r'<section id="llm">(.*?)</section>', html, re.S)
    assert section, "no LLM section"
    body = section.group(1)
    ppl = rep["perplexity"]
    for value in (ppl["baseline"], ppl["optimized"], *ppl["baseline_interval"], *ppl["optimized_interval"]):
        assert f"{value:.3f}" in body
    assert f"{ppl['increase']:+.2%}" in body and f"+{ppl['budget']:.2%}" in body
    assert escape(rep["policy"]["reason"]) in body
    for sample in rep["generations"]["samples"]:
        for text in (sample["prompt"], sample["dense"], sample["shipped"]):
            assert escape(text) in body
    # candidates by perplexity: W4A16 measured and chosen, W8A8 listed as not built
    cands = re.search(r'<section id="candidates">(.*?)</section>', html, re.S).group(1)
    assert "w4a16</span> (chosen)" in cands and "perplexity (90%)" in cands
    assert "not built: a more compressed candidate was already within budget" in cands
    assert "drop (pt)" not in cands  # the ONNX outcome table does not stand in for perplexity


def test_html_escapes_generated_text(llm_run):
    from sparsify_runner.llm.report import LlmReport
    from sparsify_runner.report_html import render_report_html

    rep = LlmReport.model_validate_json((llm_run / "report.json").read_text(encoding="utf-8"))
    rep.generations.samples[0].shipped = "<script>alert(1)</script>"
    html = render_report_html(rep)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_dashboard_and_compare_keep_the_llm_section(llm_run):
    """The dashboard renders a run's report from report.json: a text-generation report keeps its section."""
    from fastapi.testclient import TestClient
    from sparsifyctl.dashboard.app import create_app

    client = TestClient(create_app([str(llm_run.parent)], None, None), base_url="http://127.0.0.1")
    page = client.get(f"/report/0/{llm_run.name}")
    assert page.status_code == 200, page.text[:300]
    assert page.text == (llm_run / "report.html").read_text(encoding="utf-8")
    assert '<section id="llm">' in page.text
