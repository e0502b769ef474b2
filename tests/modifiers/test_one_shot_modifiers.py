"""In-process unit tests of the one-shot modifiers on a tiny ONNX convnet: each moves
``OneShotState.current`` forward (or, when it declines, leaves it) and reports through a
``ModifierResult``; ``plan`` turns the recipe and the level into the list that runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from oneshot.conftest import export
from sparsify_runner.evaluate import run_onnx
from sparsify_runner.modifiers.one_shot import (
    ChannelPruning,
    Int8Search,
    OneShotState,
    UnstructuredPruning,
    plan,
)
from sparsify_runner.recipes import load_recipe
from sparsify_runner.recipes.schema import ChannelPruningConfig, Int8SearchConfig, UnstructuredPruningConfig
from sparsify_runner.spec import Experiment
from structured_oneshot.conftest import _tiny_net  # the convnet the channel tests use


@pytest.fixture(scope="module")
def convnet(tmp_path_factory) -> Path:
    return export(_tiny_net(), tmp_path_factory.mktemp("models") / "convnet.onnx")


def _state(model_path: Path, build: Path, n: int = 24) -> OneShotState:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((3, 16, 16)).astype(np.float32)} for _ in range(n)]
    state = OneShotState(
        baseline=model_path,
        current=model_path,
        build=build,
        calibration=samples[: n - 8],
        holdout=samples[n - 8 :],
        baseline_outputs=[],
        model=onnx.load(str(model_path)),
    )
    state.baseline_outputs = state.holdout_outputs(model_path, "baseline")
    return state


def _recipe(**args):
    exp = Experiment(type="one-shot", use_case="custom-thing", model="m.onnx", data="d", recipe_args=args)
    return load_recipe(exp)


def test_unstructured_pruning_moves_the_state_to_the_pruned_model(convnet, tmp_path):
    state = _state(convnet, tmp_path)
    config = _recipe(pruning_allocation="erk").config(UnstructuredPruningConfig)
    modifier = UnstructuredPruning(0.5, method="obs", config=config)
    modifier.initialize(state)
    result = modifier.finalize(state)
    assert state.current == tmp_path / "pruned.onnx" and state.current.is_file()
    assert result.info["achieved_sparsity"] == pytest.approx(0.5, abs=0.05)
    assert 0.0 < result.info["pruned_fidelity"] <= 1.0
    assert result.layers and "prune" in result.timings_s
    assert state.current in state.outputs  # evaluated once, reused by the pathway


def test_channel_pruning_declines_below_its_fidelity_floor_and_applies_above(convnet, tmp_path):
    strict = _recipe(max_channels_fidelity_loss=0.0, round_channels_to=1).config(ChannelPruningConfig)
    state = _state(convnet, tmp_path / "strict")
    (tmp_path / "strict").mkdir()
    result = ChannelPruning(0.5, config=strict).finalize(state)
    if result.info["pruned_fidelity"] < 1.0:  # a 50% MAC cut is never exact on random weights
        assert result.info["channels_rejected"] is True
        assert state.current == convnet and not result.layers
        assert any("no channels were removed" in n for n in result.notes)

    loose = _recipe(max_channels_fidelity_loss=1.0, round_channels_to=1).config(ChannelPruningConfig)
    (tmp_path / "loose").mkdir()
    state = _state(convnet, tmp_path / "loose")
    result = ChannelPruning(0.5, config=loose).finalize(state)
    assert "channels_rejected" not in result.info and state.current != convnet
    summary = result.info["channel_summary"]
    assert summary["macs_after"] < summary["macs_before"] and summary["removed"] > 0
    assert np.asarray(run_onnx(state.current, state.holdout)[0]).reshape(-1).shape == (10,)


def test_int8_search_reports_candidates_and_keeps_the_input_when_nothing_qualifies(convnet, tmp_path):
    state = _state(convnet, tmp_path)
    config = _recipe(max_int8_fidelity_loss=0.0, int8_candidate_seconds=0.05, int8_search_seconds=5).config(
        Int8SearchConfig
    )
    result = Int8Search(quant_format="qdq", config=config).finalize(state)
    assert result.candidates and "quantize" in result.timings_s
    if result.info["int8_applied"]:
        assert state.current == tmp_path / "int8.onnx"
        kinds = {n.op_type for n in onnx.load(str(state.current)).graph.node}
        assert "QuantizeLinear" in kinds
    else:  # the FP32 model stays current: its held-out outputs are not computed again
        assert state.current == convnet and result.info["int8"]["chosen"] == "fp32"


@pytest.mark.parametrize(
    ("target", "channels", "int8", "expected"),
    [
        (0.0, False, False, []),
        (0.0, False, True, ["Int8Search"]),
        (0.5, False, True, ["UnstructuredPruning", "Int8Search"]),
        (0.4, True, False, ["ChannelPruning"]),
    ],
)
def test_plan_lists_the_modifiers_in_order(target, channels, int8, expected):
    modifiers = plan(_recipe(), target=target, channels=channels, method="obs", int8=int8, quant_format="qdq")
    assert [type(m).__name__ for m in modifiers] == expected
