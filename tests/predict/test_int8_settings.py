"""The INT8 settings predict benchmarks come from the product's own resolvers: the format from
``quant_format.resolve_quant_format``, 7-bit weights from ``cpu_features.int8_saturates``
(with its ``SPARSIFY_INT8_SATURATES`` override)."""

from __future__ import annotations

import pytest
from sparsify_runner.cpu_features import OVERRIDE_ENV
from sparsify_runner.predict import int8_settings
from sparsify_runner.quant_format import onnxruntime_quant_format, resolve_quant_format
from sparsify_runner.spec import DeployTarget


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False)])
def test_reduce_range_follows_the_saturation_override(monkeypatch, value: str, expected: bool) -> None:
    monkeypatch.setenv(OVERRIDE_ENV, value)
    assert int8_settings(DeployTarget())["reduce_range"] is expected


def test_cuda_targets_do_not_get_cpu_reduce_range(monkeypatch) -> None:
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    assert int8_settings(DeployTarget(device="cuda"))["reduce_range"] is False


@pytest.mark.parametrize(
    ("deploy", "recipe", "expected"),
    [
        ("auto", None, "qdq"),
        ("qdq", None, "qdq"),
        ("qoperator", None, "qoperator"),
        ("qoperator", "qdq", "qdq"),
        ("qdq", "qoperator", "qoperator"),
        ("qoperator", "auto", "qdq"),
    ],
)
def test_resolve_quant_format(deploy: str, recipe: str | None, expected: str) -> None:
    assert resolve_quant_format(DeployTarget(quant_format=deploy), recipe) == expected
    assert int8_settings(DeployTarget(quant_format=deploy))["format"] == resolve_quant_format(
        DeployTarget(quant_format=deploy)
    )


def test_onnxruntime_quant_format() -> None:
    from onnxruntime.quantization import QuantFormat

    assert onnxruntime_quant_format("qdq") == QuantFormat.QDQ
    assert onnxruntime_quant_format("qoperator") == QuantFormat.QOperator
