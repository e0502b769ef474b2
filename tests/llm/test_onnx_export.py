"""The CPU ONNX export: 4-bit MatMulNBits written from the GPTQ integers reproduce the fake-quantized
torch model; the KV-cache decode graph generates what transformers' greedy generate does; the
pathway ships ``onnx/`` with decode timing beside ``model/``; unsupported architectures are one
line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import SEQUENCE, corpus, run_cli

GROUP = 32  # the tiny Llama's widths (96, 160) take 32


@pytest.fixture(scope="module")
def w4a16(tiny_llama, tmp_path_factory) -> Path:
    """llm-compressor's GPTQ W4A16 (group 32) of the tiny Llama, saved compressed (pack-quantized)."""
    import torch
    from sparsify_runner.llm.compress import run_candidate
    from sparsify_runner.llm.model_loading import load_tokenizer
    from sparsify_runner.llm.schemes import SchemeName

    tokenizer = load_tokenizer(tiny_llama)
    ids = torch.tensor(tokenizer(corpus(5))["input_ids"][: SEQUENCE * 12]).view(12, SEQUENCE)
    out = tmp_path_factory.mktemp("w4a16") / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_candidate(
            SchemeName.W4A16,
            dense_folder=tiny_llama,
            tokenizer=tokenizer,
            group_size=GROUP,
            calibration=ids[:8],
            held_out=ids[8:],
            out_dir=out,
        )
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def windows(tiny_llama) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tokenizer(corpus(6))["input_ids"][: SEQUENCE * 4]
    return np.asarray(ids, dtype=np.int64).reshape(4, SEQUENCE)


def _torch_logits(folder: Path, windows: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(windows)).logits.numpy()


def _onnx_logits(folder: Path, windows: np.ndarray) -> np.ndarray:
    from sparsify_runner.llm.onnx_decode import OnnxCausalLM

    model = OnnxCausalLM(folder, load_tokenizer=False)
    return np.stack([model.forward(w[None])[0][0] for w in windows])


def test_int4_weights_are_the_gptq_integers_not_rounded_again(w4a16, tmp_path):
    """Dequantizing the graph's MatMulNBits initializers gives exactly the weights transformers
    decompresses from the compressed-tensors folder (the fake-quantized GPTQ weights)."""
    import onnx
    import torch
    from compressed_tensors.compressors.base import decompress_module
    from onnx import numpy_helper
    from sparsify_runner.llm.onnx_export import export_onnx
    from transformers import AutoModelForCausalLM

    result = export_onnx(w4a16, tmp_path / "onnx")
    assert result.info.weights == "int4" and result.info.block_size == GROUP
    assert result.info.quantized_linears == 14 and result.info.float_linears == 1  # 2 layers x 7; lm_head
    proto = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nbits = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 14 and all(n.domain == "com.microsoft" for n in nbits)
    model = AutoModelForCausalLM.from_pretrained(w4a16, dtype=torch.float32)
    for n in nbits:
        attrs = {a.name: a.i for a in n.attribute}
        assert attrs["bits"] == 4 and attrs["block_size"] == GROUP and len(n.input) == 3  # zero point 8
        b, scales = inits[n.input[1]], inits[n.input[2]]
        low, high = (b & 0x0F).astype(np.int32), (b >> 4).astype(np.int32)
        q = np.stack([low, high], axis=-1).reshape(attrs["N"], attrs["K"]) - 8
        dequant = (q.reshape(attrs["N"], -1, GROUP) * scales.reshape(attrs["N"], -1, 1)).reshape(q.shape)
        # the weight compressed-tensors decompresses for the torch model (GPTQ's fake-quantized weight)
        linear = model.get_submodule(n.input[1].removesuffix(".qweight"))
        decompress_module(linear)
        expected = linear.weight.detach().numpy()
        np.testing.assert_array_equal(dequant.astype(np.float32), expected)


def test_int4_export_reproduces_the_fake_quantized_logits(w4a16, windows, tmp_path):
    from sparsify_runner.llm.onnx_export import export_onnx

    export_onnx(w4a16, tmp_path / "onnx")
    want, got = _torch_logits(w4a16, windows), _onnx_logits(tmp_path / "onnx", windows)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_dense_export_reproduces_the_torch_logits(tiny_llama, windows, tmp_path):
    from sparsify_runner.llm.onnx_export import export_onnx

    result = export_onnx(tiny_llama, tmp_path / "onnx")
    assert result.info.weights == "fp32" and result.info.quantized_linears == 0
    want, got = _torch_logits(tiny_llama, windows), _onnx_logits(tmp_path / "onnx", windows)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", ["dense", "int4"])
def test_greedy_decode_with_the_kv_cache_equals_transformers_generate(
    which, tiny_llama, w4a16, windows, tmp_path
):
    import torch
    from sparsify_runner.llm.onnx_decode import OnnxCausalLM
    from sparsify_runner.llm.onnx_export import export_onnx
    from transformers import AutoModelForCausalLM

    folder = tiny_llama if which == "dense" else w4a16
    export_onnx(folder, tmp_path / "onnx")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    decoder = OnnxCausalLM(tmp_path / "onnx")
    for prompt in (windows[0, :5].tolist(), windows[1, :17].tolist()):
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        want = out[0, len(prompt) :].tolist()
        assert list(decoder.generate_ids(prompt, 24, eos_token_ids=[])) == want
    # the end-of-sequence id stops generation (and is yielded)
    first = next(decoder.generate_ids(windows[0, :5].tolist(), 1, eos_token_ids=[]))
    assert list(decoder.generate_ids(windows[0, :5].tolist(), 24, eos_token_ids=[first])) == [first]
    assert decoder.eos_token_ids == [decoder.tokenizer.eos_token_id]
    assert isinstance(decoder.generate("the model reads", max_new_tokens=4), str)


def test_onnx_window_nll_equals_the_torch_perplexity(w4a16, windows, tmp_path):
    import torch
    from sparsify_runner.llm import perplexity
    from sparsify_runner.llm.onnx_decode import OnnxCausalLM
    from sparsify_runner.llm.onnx_export import export_onnx
    from transformers import AutoModelForCausalLM

    export_onnx(w4a16, tmp_path / "onnx")
    nll = OnnxCausalLM(tmp_path / "onnx", load_tokenizer=False).window_nll(windows)
    model = AutoModelForCausalLM.from_pretrained(w4a16, dtype=torch.float32).eval()
    torch_ppl = perplexity.measure(model, torch.from_numpy(windows))
    np.testing.assert_allclose(nll, torch_ppl.window_nll, rtol=1e-5)


def test_timing_helper_alternates_models_and_reports_batch_1_statistics(tiny_llama, w4a16, tmp_path):
    from sparsify_runner.llm.onnx_decode import time_models
    from sparsify_runner.llm.onnx_export import export_onnx

    a, b = export_onnx(tiny_llama, tmp_path / "a").folder, export_onnx(w4a16, tmp_path / "b").folder
    dense, int4 = time_models([a, b], prompt_tokens=8, new_tokens=4, rounds=3)
    for t in (dense, int4):
        assert t.prefill.iterations == 3 and t.decode.iterations == 12
        assert t.prefill.batch_size == 1 and t.decode_tokens_per_s > 0


def test_cli_cpu_run_ships_the_onnx_export_with_decode_speed(tiny_llama, split_data, tmp_path, capsys):
    """Level 1.0 on cpu, W4A16 only: model/ and onnx/ ship; the report has decode speed of dense
    FP32 vs int4 measured in one process, and the ONNX perplexity equals the GPTQ model's."""
    from sparsify_runner.llm.onnx_decode import OnnxCausalLM

    from .conftest import FAST_ARGS, one_shot

    out = tmp_path / "out"
    args = json.dumps({**json.loads(FAST_ARGS), "schemes": ["w4a16"]})
    argv = one_shot(tiny_llama, split_data, out, "--optim-level", "1.0", "--recipe-args", args)
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    rep = json.loads((out / "report.json").read_text())
    if rep["policy"]["chosen"] != "w4a16":
        pytest.skip("the tiny model's W4A16 was over the level-1.0 budget; nothing int4 shipped")
    cpu = rep["cpu_export"]
    assert cpu["weights"] == "int4" and cpu["block_size"] == GROUP and cpu["folder"] == "onnx"
    assert cpu["dense"]["weights"] == "fp32"
    assert cpu["perplexity_matches"] is True
    assert cpu["shipped"]["perplexity"] == pytest.approx(rep["perplexity"]["optimized"], rel=1e-3)
    assert cpu["shipped"]["size_bytes"] < cpu["dense"]["size_bytes"]
    assert cpu["shipped"]["decode"]["iterations"] == cpu["rounds"] * cpu["decode_tokens"]
    assert rep["optimized"]["latency"] == cpu["shipped"]["decode"] and rep["speed"] is not None
    assert "onnxruntime CPU" in rep["speedup_source"]
    assert any("decode" in n and "tokens/s" in n for n in rep["notes"])
    assert (out / "model" / "config.json").is_file()
    info = json.loads((out / "onnx" / "export.json").read_text())
    assert info["weights"] == "int4" and info["num_layers"] == 2
    # the shipped folder decodes on its own (tokenizer included)
    assert isinstance(OnnxCausalLM(out / "onnx").generate("the model", max_new_tokens=3), str)


def test_cli_cpu_level_0_exports_the_dense_model(tiny_llama, text_file, tmp_path, capsys):
    from .conftest import one_shot

    out = tmp_path / "out"
    code, _, stderr = run_cli(one_shot(tiny_llama, text_file, out, "--optim-level", "0"), capsys)
    assert code == 0, stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["cpu_export"]["weights"] == "fp32" and rep["speed"]["verdict"] == "identical model"
    assert json.loads((out / "onnx" / "export.json").read_text())["quantized_linears"] == 0


def test_cpu_target_refuses_an_architecture_the_export_does_not_support(tmp_path, text_file, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from .conftest import byte_tokenizer, one_shot

    folder = tmp_path / "gpt2"
    tokenizer = byte_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    capsys.readouterr()
    code, _, err = run_cli(one_shot(folder, text_file, out, "--deploy-device", "cpu"), capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "GPT2LMHeadModel" in lines[0] and "CPU ONNX export" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_export_refuses_other_quantization_formats(tiny_llama, tmp_path):
    import shutil

    from sparsify_runner.llm.onnx_export import ExportError, export_onnx

    folder = tmp_path / "w8"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}},
    }
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="pack-quantized"):
        export_onnx(folder, tmp_path / "onnx")

