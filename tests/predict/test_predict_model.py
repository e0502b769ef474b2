"""The pieces of the prediction: profile parsing on a real onnxruntime trace, the time model."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from sparsify_runner.errors import InputError
from sparsify_runner.predict import (
    LayerBench,
    NodeProfile,
    NodeTiming,
    OpFactor,
    _floor,
    _predict_time,
    parse_profile,
    profile_model,
)


@pytest.fixture(scope="module")
def trace(conv_onnx, tmp_path_factory):
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path_factory.mktemp("trace") / "p")
    sess = ort.InferenceSession(str(conv_onnx), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 24, 24)).astype(np.float32)
    for _ in range(4):
        sess.run(None, {"x": x})
    with open(sess.end_profiling(), encoding="utf-8") as fh:
        return json.load(fh)


def test_parse_real_profile(trace):
    nodes, runs, outside = parse_profile(trace, skip_runs=1)
    assert runs == 3
    assert 0.0 <= outside < 1.0
    by_kind = {}
    for n in nodes:
        by_kind.setdefault(n.kind, []).append(n)
    assert {"conv", "conv1x1", "depthwise", "gemm"} <= set(by_kind)
    assert sum(n.share for n in nodes) == pytest.approx(1.0, abs=1e-4)
    assert all(n.time_ms >= 0 for n in nodes)
    (stem,) = by_kind["conv"]
    assert stem.weight_shape == [16, 3, 3, 3] and stem.output_shape == [1, 16, 24, 24]
    assert stem.macs == 24 * 24 * 16 * 27
    (dw,) = by_kind["depthwise"]
    assert dw.weight_shape == [32, 1, 3, 3] and dw.macs == 24 * 24 * 32 * 9
    assert by_kind["gemm"][0].macs == 320
    # the warm-up run is dropped: keeping every run yields more samples per node
    _, all_runs, _ = parse_profile(trace, skip_runs=0)
    assert all_runs == 4


def test_parse_profile_without_nodes():
    with pytest.raises(InputError, match="no node timings"):
        parse_profile([{"cat": "Session", "name": "model_run", "ts": 0, "dur": 5}])


def test_profile_model_accounts_for_the_wall_time(conv_onnx):
    prof = profile_model(conv_onnx, runs=3, seconds=0.1)
    assert prof.iterations >= 5 and prof.runs == 3
    assert prof.node_ms + prof.overhead_ms == pytest.approx(prof.latency_ms, rel=1e-3)
    assert prof.macs == 24 * 24 * (16 * 27 + 32 * 16 + 32 * 9) + 320


def _node(kind: str, ms: float, macs: int, name: str) -> NodeTiming:
    return NodeTiming(name=name, op_type="Conv", kind=kind, time_ms=ms, share=0.0, macs=macs)


def test_time_model_arithmetic():
    """8 ms of conv (INT8 x2, floor 0.2 FP32 / 0.5 INT8) + 2 ms of other ops + 1 ms overhead."""
    prof = NodeProfile(
        model="m",
        provider="CPUExecutionProvider",
        batch_size=1,
        runs=1,
        latency_ms=11.0,
        latency_std_ms=0.0,
        iterations=10,
        node_ms=10.0,
        overhead_ms=1.0,
        nodes=[_node("conv1x1", 8.0, 1000, "c"), _node("other", 2.0, 0, "o")],
    )
    bench = LayerBench(
        kind="conv1x1",
        shape="x",
        macs=1000,
        fp32_ms=1.0,
        int8_factor=2.0,
        int8_low=1.5,
        int8_high=2.5,
        fp32_floor=0.2,
        int8_floor=0.5,
        rounds=10,
    )
    factors = {
        "conv1x1": OpFactor(
            kind="conv1x1", factor=2.0, low=1.0, high=3.0, fp32_floor=0.2, int8_floor=0.5, layers=1
        )
    }

    def t(**kw):
        return _predict_time(prof, [bench], factors, **kw)

    assert t(int8=False, kept=1.0, which=0) == pytest.approx(11.0)
    assert t(int8=True, kept=1.0, which=0) == pytest.approx(1 + 2 + 8 / 2)
    # a shape not benchmarked itself takes the nearest layer's factor but the kind's whole spread
    assert t(int8=True, kept=1.0, which=-1) == pytest.approx(1 + 2 + 8 / 1.0)
    assert t(int8=True, kept=1.0, which=1) == pytest.approx(1 + 2 + 8 / 3.0)
    half = 1 + 2 * math.sqrt(0.5)
    assert t(int8=False, kept=0.5, which=0) == pytest.approx(half + 8 * (0.2 + 0.8 * 0.5))
    assert t(int8=True, kept=0.5, which=0) == pytest.approx(half + 8 * (0.5 + 0.5 * 0.5) / 2)
    # pessimistic: more fixed cost and the low INT8 factor
    assert t(int8=True, kept=0.5, which=-1) == pytest.approx(half + 8 * (0.6 + 0.4 * 0.5) / 1.0)


@pytest.mark.parametrize(
    ("full", "reduced", "kept", "want"),
    [(10.0, 2.5, 0.25, 0.0), (10.0, 10.0, 0.25, 1.0), (10.0, 5.5, 0.25, 0.4), (10.0, 1.0, 0.25, 0.0)],
)
def test_floor_fit(full, reduced, kept, want):
    assert _floor(full, reduced, kept) == pytest.approx(want)


def test_micro_benchmark_with_cold_cache(conv_onnx):
    """The cache-evicting path (models whose weights exceed the last-level cache) measures every
    kind the model has, at the model's own shapes, at full and reduced width."""
    from sparsify_runner.predict import _last_level_cache_bytes, int8_factors

    llc = _last_level_cache_bytes()
    assert llc is None or llc > 0
    prof = profile_model(conv_onnx, runs=2, seconds=0.05)
    factors, layers = int8_factors(prof.nodes, seconds=0.1, layers_per_kind=1, cold_weights=True)
    assert set(factors) == {"conv", "conv1x1", "depthwise", "gemm"}
    shapes = {b.kind: b.shape for b in layers}
    assert shapes["conv1x1"] == "16->32 1x1 @ 1x24x24" and shapes["gemm"] == "1x32 @ 32x10"
    for b in layers:
        assert b.rounds >= 10 and b.int8_low <= b.int8_factor <= b.int8_high
