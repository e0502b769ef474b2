"""``sparsifyctl predict`` end to end (in-process): every point present, the policy's invariants."""

from __future__ import annotations

import math

import pytest
from sparsify_runner.predict import Prediction
from sparsify_runner.recipes import macs_reduction_for_level, sparsity_for_level
from sparsify_runner.spec import ExperimentType

from .conftest import FAST, predict_json, run_cli

LEVELS = (0.0, 0.2, 0.5, 0.8)


@pytest.fixture(scope="module")
def conv_prediction(conv_onnx) -> Prediction:
    return Prediction.model_validate(
        predict_json([str(conv_onnx), "--levels", "0,0.2,0.5,0.8", "--structures", "unstructured,channels"])
    )


@pytest.fixture(scope="module")
def mlp_prediction(mlp_onnx) -> Prediction:
    return Prediction.model_validate(predict_json([str(mlp_onnx), "--levels", "0,0.2,0.5,0.8"]))


@pytest.mark.parametrize("which", ["conv_prediction", "mlp_prediction"])
def test_policy_invariants(which, request):
    pred: Prediction = request.getfixturevalue(which)
    assert {(p.optim_level, p.structure) for p in pred.points} == {
        (lv, s) for lv in LEVELS for s in ("unstructured", "channels")
    }
    base = pred.point(0.0, "unstructured")
    assert base.predicted_speedup == 1.0 and pred.point(0.0, "channels").predicted_speedup == 1.0
    assert not base.int8 and math.isclose(base.predicted_latency_ms, pred.baseline_latency_ms, rel_tol=1e-3)
    int8_only = pred.point(0.2, "unstructured").predicted_speedup
    for p in pred.points:
        assert p.low <= p.predicted_speedup <= p.high, p
        assert math.isclose(
            p.predicted_latency_ms * p.predicted_speedup, pred.baseline_latency_ms, rel_tol=1e-3
        )
        assert p.assumptions
        assert 1.0 <= p.speedup_without_int8 <= p.predicted_speedup
        if p.structure == "unstructured":
            # sparsity on onnxruntime is x1.0: every level > 0 predicts the INT8-only speedup
            assert p.sparsity == sparsity_for_level(ExperimentType.one_shot, p.optim_level)
            assert p.speedup_without_int8 == 1.0
            if p.optim_level > 0:
                assert p.predicted_speedup == int8_only
            if p.sparsity:
                assert "x1.0" in p.assumptions
        else:
            expected = macs_reduction_for_level(ExperimentType.one_shot, p.optim_level)
            assert p.macs_reduction == pytest.approx(expected, abs=1e-4)
            assert p.predicted_speedup >= pred.point(p.optim_level, "unstructured").predicted_speedup
            if p.optim_level >= 0.3:
                assert "training-aware" in p.pathways and "sparse-transfer" not in p.pathways
    # INT8 never predicts slower than FP32: the product would ship FP32 instead
    assert int8_only >= 1.0


def test_conv_profile_kinds(conv_prediction):
    kinds = {k.kind: k for k in conv_prediction.kinds}
    assert {"conv", "conv1x1", "depthwise", "gemm"} <= set(kinds)
    assert sum(k.share for k in conv_prediction.kinds) == pytest.approx(1.0, abs=1e-3)
    for kind in ("conv", "conv1x1", "depthwise", "gemm"):
        f = conv_prediction.factors[kind]
        assert f.low <= f.high and f.factor > 0 and f.layers == 1
        assert 0.0 <= f.fp32_floor <= 1.0 and 0.0 <= f.int8_floor <= 1.0
    # MACs by kind from the profiled shapes: 24x24 outputs, batch 1
    assert kinds["conv"].macs == 24 * 24 * 16 * 3 * 9
    assert kinds["conv1x1"].macs == 24 * 24 * 32 * 16
    assert kinds["depthwise"].macs == 24 * 24 * 32 * 9
    assert kinds["gemm"].macs == 32 * 10
    assert conv_prediction.macs == sum(k.macs for k in conv_prediction.kinds if k.macs)
    assert conv_prediction.int8_settings["format"] == "qdq"


def test_mlp_kinds(mlp_prediction):
    kinds = {k.kind: k for k in mlp_prediction.kinds}
    assert kinds["matmul"].macs == 8 * 64 * 128 and kinds["gemm"].macs == 8 * 128 * 10
    assert {b.kind for b in mlp_prediction.layers} == {"matmul", "gemm"}


def test_rows_for_tables(conv_prediction):
    rows = conv_prediction.rows()
    assert len(rows) == len(conv_prediction.points)
    assert list(rows[0]) == [
        "level",
        "structure",
        "INT8",
        "pruning",
        "latency ms",
        "speedup",
        "interval",
        "without INT8",
        "pathways",
    ]
    assert all(isinstance(v, str) for r in rows for v in r.values())


def test_table_output_and_batch_size(conv_onnx):
    code, out, err = run_cli(
        [
            "predict",
            str(conv_onnx),
            "--levels",
            "0.5",
            "--structures",
            "channels",
            "--deploy-batch-size",
            "4",
            *FAST,
        ]
    )
    assert code == 0, err
    assert "predicted on the target" in out and "channels" in out and "batch 4" in out
    assert "training-aware" in out


def test_batch_size_scales_macs(conv_onnx):
    pred = Prediction.model_validate(
        predict_json(
            [str(conv_onnx), "--levels", "0.2", "--structures", "unstructured", "--deploy-batch-size", "2"]
        )
    )
    assert pred.deploy.batch_size == 2
    assert {k.kind: k.macs for k in pred.kinds}["conv1x1"] == 2 * 24 * 24 * 32 * 16
    assert [(p.optim_level, p.structure) for p in pred.points] == [(0.2, "unstructured")]


def test_qoperator_format(mlp_onnx):
    pred = Prediction.model_validate(
        predict_json(
            [
                str(mlp_onnx),
                "--levels",
                "0.2",
                "--structures",
                "unstructured",
                "--deploy-quant-format",
                "qoperator",
            ]
        )
    )
    assert pred.int8_settings["format"] == "qoperator"
    assert "QOPERATOR" in pred.point(0.2).assumptions
