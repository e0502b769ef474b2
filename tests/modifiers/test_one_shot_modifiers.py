"""In-process unit tests of the one-shot modifiers on a tiny ONNX convnet: each moves
``OneShotState.current`` forward (or, when it declines, leaves it) and reports through a
``ModifierResult``; the INT8 search takes the outcome search's judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from oneshot.conftest import export
from sparsify_runner.evaluate import run_onnx
from sparsify_runner.modifiers.one_shot import ChannelPruning, OneShotState, UnstructuredPruning
from sparsify_runner.recipes import load_recipe
from sparsify_runner.recipes.schema import ChannelPruningConfig, UnstructuredPruningConfig
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
    assert state.current == tmp_path / "pruned-unstructured-0.5.onnx" and state.current.is_file()
    assert result.achieved_sparsity == pytest.approx(0.5, abs=0.05)
    assert 0.0 < result.pruned_fidelity <= 1.0
    assert result.layers and "prune" in result.timings_s
    assert state.current in state.outputs  # evaluated once, reused by the pathway


def test_channel_pruning_declines_below_its_fidelity_floor_and_applies_above(convnet, tmp_path):
    strict = _recipe(max_channels_fidelity_loss=0.0, round_channels_to=1).config(ChannelPruningConfig)
    state = _state(convnet, tmp_path / "strict")
    (tmp_path / "strict").mkdir()
    result = ChannelPruning(0.5, config=strict).finalize(state)
    if result.pruned_fidelity < 1.0:  # a 50% MAC cut is never exact on random weights
        assert result.rejected is True
        assert state.current == convnet and not result.layers
        assert any("no channels were removed" in n for n in result.notes)

    loose = _recipe(max_channels_fidelity_loss=1.0, round_channels_to=1).config(ChannelPruningConfig)
    (tmp_path / "loose").mkdir()
    state = _state(convnet, tmp_path / "loose")
    result = ChannelPruning(0.5, config=loose).finalize(state)
    assert not result.rejected and state.current != convnet
    summary = result.channels
    assert summary.macs_after < summary.macs_before and summary.removed > 0
    assert np.asarray(run_onnx(state.current, state.holdout)[0]).reshape(-1).shape == (10,)


def test_int8_search_judged_against_the_baseline_uses_the_judge_not_its_own_fidelity(convnet, tmp_path):
    """With the outcome search's judge, a candidate passes by its drop against the baseline:
    a zero budget on a model whose INT8 changes its outputs leaves nothing to choose."""
    from sparsify_runner.modifiers.int8 import quantize_int8
    from sparsify_runner.outcome.judge import Judge

    state = _state(convnet, tmp_path)
    judge = Judge(state.baseline_outputs, budget=1.0)
    q = quantize_int8(
        convnet, state.calibration, tmp_path / "int8.onnx", holdout=state.holdout,
        bench_seconds=0.05, time_budget_s=5, judge=judge,
    )  # fmt: skip
    rows = [c for c in q.candidates if c.name != "fp32"]
    assert rows and all(c.within_budget is True and c.accuracy_drop is not None for c in rows)
    if q.quantized:
        assert q.assessment is not None and q.assessment.metric == "estimated accuracy"
