"""quantize_int8: valid QDQ/QOperator graphs that run, measured candidates, honest fallback."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from sparsify_runner.evaluate import run_onnx


def _samples(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((3, 16, 16)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_quantize_int8_picks_candidate_and_records_alternatives(tiny_onnx, tmp_path, fmt):
    from sparsify_runner.modifiers.int8 import quantize_int8

    out = tmp_path / "int8.onnx"
    result = quantize_int8(
        tiny_onnx,
        _samples(16),
        out,
        holdout=_samples(8, seed=1),
        quant_format=fmt,
        max_fidelity_loss=1.0,
        min_speedup=0.0,
        bench_seconds=0.05,
    )
    assert result.quantized and result.chosen.startswith("int8-")
    chosen = [c for c in result.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].name == result.chosen
    assert len(result.candidates) >= 4 and any(c.name == "fp32" for c in result.candidates)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    if fmt == "qdq":
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    else:
        assert ops & {"QLinearConv", "ConvInteger"}
    outs = run_onnx(out, _samples(4, seed=2))
    assert len(outs) == 4 and outs[0].shape == (10,)
    assert not list(tmp_path.glob(".quant-*")), "work files must be cleaned up"


def test_quantize_int8_falls_back_to_fp32_when_nothing_qualifies(tiny_onnx, tmp_path):
    from sparsify_runner.modifiers.int8 import quantize_int8

    out = tmp_path / "int8.onnx"
    # An impossible speed requirement: no INT8 candidate qualifies, FP32 is returned and said so.
    result = quantize_int8(
        tiny_onnx,
        _samples(8),
        out,
        holdout=_samples(6, seed=1),
        min_speedup=1000.0,
        bench_seconds=0.05,
        time_budget_s=60,
    )
    assert not result.quantized and result.chosen == "fp32"
    assert out.read_bytes() == tiny_onnx.read_bytes()
    assert any("INT8 not applied" in n for n in result.notes)
    assert [c.name for c in result.candidates if c.chosen] == ["fp32"]
    names = [c.name for c in result.candidates]
    assert any(n.endswith("-gptq") for n in names), names  # GPTQ weights tried before FP32 nodes
    assert any("fp32-top" in n for n in names) or any("depthwise" in n for n in names)


@pytest.mark.parametrize("reduce_range", [True, False])
def test_quantize_int8_can_be_held_to_one_weight_grid(tiny_onnx, tmp_path, reduce_range):
    """A model tuned by QAT for one weight grid is built on that grid only."""
    from sparsify_runner.modifiers.int8 import quantize_int8

    result = quantize_int8(
        tiny_onnx,
        _samples(8),
        tmp_path / "int8.onnx",
        holdout=_samples(6, seed=1),
        max_fidelity_loss=1.0,
        min_speedup=0.0,
        bench_seconds=0.05,
        reduce_range=reduce_range,
    )
    int8 = [c.name for c in result.candidates if c.name != "fp32"]
    assert int8 and all(("reduce-range" in n) == reduce_range for n in int8), int8


def test_node_sensitivity_ranks_quantized_nodes(tiny_onnx, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_static
    from sparsify_runner.modifiers.int8 import node_sensitivity
    from sparsify_runner.modifiers.int8.candidates import CalibrationReader

    q = tmp_path / "q.onnx"
    quantize_static(
        str(tiny_onnx),
        str(q),
        CalibrationReader(_samples(8), 1),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    ranked = node_sensitivity(tiny_onnx, q, _samples(4), 1)
    names = [n for n, _ in ranked]
    conv_names = [n.name for n in onnx.load(str(tiny_onnx)).graph.node if n.op_type == "Conv"]
    assert set(conv_names) <= set(names)
    errors = [e for _, e in ranked]
    assert errors == sorted(errors, reverse=True)


def test_flip_allowance_follows_the_binomial_budget():
    from sparsify_runner.modifiers.int8 import allowed_flips, within_budget
    from sparsify_runner.report import Fidelity

    assert [allowed_flips(n, 0.01) for n in (8, 64, 200)] == [0, 1, 3]
    assert allowed_flips(64, 0.0) == 0
    assert within_budget(Fidelity(samples=64, top1_agreement=63 / 64, cosine_similarity=0.99), 0.99)
    assert not within_budget(Fidelity(samples=64, top1_agreement=62 / 64, cosine_similarity=0.99), 0.99)
    assert within_budget(Fidelity(samples=5, cosine_similarity=0.995), 0.99)
    assert not within_budget(Fidelity(samples=5, cosine_similarity=0.98), 0.99)


def test_search_starts_no_candidate_that_would_overrun_its_budget(tiny_onnx, tmp_path):
    from sparsify_runner.modifiers.int8 import quantize_int8

    result = quantize_int8(
        tiny_onnx,
        _samples(8),
        tmp_path / "int8.onnx",
        holdout=_samples(6, seed=1),
        min_speedup=1000.0,  # nothing qualifies, so only the budget ends the search
        bench_seconds=0.05,
        time_budget_s=0.01,
    )
    names = [c.name for c in result.candidates]
    assert names == ["int8-u8s8", "int8-s8s8", "int8-u8s8-reduce-range", "fp32"]
    assert any("stopped before its time budget" in n for n in result.notes)


class _ScriptedSearch:
    """Stands in for ``CandidateBuilder``'s measurements: each candidate name has a given speedup and
    top-1 agreement on 64 held-out samples, so ``search``'s policy runs on known numbers."""

    def __init__(self, measured: dict[str, tuple[float, float]]) -> None:
        self.measured, self.done = measured, []
        self.calibrated_build_s = self.longest_build_s = 0.0
        self.gptq_notes: list[str] = []

    def build(self, name: str, **settings):
        from sparsify_runner.modifiers.int8.candidates import Candidate
        from sparsify_runner.report import Fidelity

        speedup, agreement = self.measured[name]
        fid = Fidelity(samples=64, top1_agreement=agreement, cosine_similarity=agreement)
        c = Candidate(
            name=name,
            path=None,
            settings={"activations": settings.get("activation", "u8"), "reduce_range": False, **settings},
            exclude=[],
            fidelity=fid,
            score=agreement,
            speedup=speedup,
            latency_ms=1.0 / speedup,
        )
        self.done.append(c)
        return c


def test_a_slow_passing_setting_does_not_end_the_search():
    """s8 activations pass the budget at 1.15x while u8 runs 2.3x just outside it: the search
    goes on refining the fast setting, and ships the refined fast candidate that passes."""
    import time

    from sparsify_runner.modifiers.int8.search import search

    s = _ScriptedSearch(
        {
            "int8-u8s8": (2.30, 0.6875),
            "int8-s8s8": (1.15, 0.75),
            "int8-u8s8-reduce-range": (2.35, 0.5625),
            "int8-u8s8-gptq": (2.25, 0.78125),
        }
    )
    chosen = search(s, 0.75, 1.0, time.perf_counter(), 300.0, 8, [])
    assert [c.name for c in s.done][-1] == "int8-u8s8-gptq"
    assert chosen is not None and chosen.name == "int8-u8s8-gptq"


def test_a_fast_passing_setting_ends_the_search():
    import time

    from sparsify_runner.modifiers.int8.search import search

    s = _ScriptedSearch(
        {"int8-u8s8": (2.30, 1.0), "int8-s8s8": (1.15, 1.0), "int8-u8s8-reduce-range": (2.0, 1.0)}
    )
    chosen = search(s, 0.99, 1.0, time.perf_counter(), 300.0, 8, [])
    assert len(s.done) == 3 and chosen.name == "int8-u8s8"
