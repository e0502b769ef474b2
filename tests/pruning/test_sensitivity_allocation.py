"""Damage-based allocation: measured per-layer sensitivity decides where the sparsity goes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sparsify_runner.evaluate import run_onnx
from sparsify_runner.kernels.allocation import (
    LayerProfile,
    allocate,
    allocate_by_damage,
    interpolate_damage,
)
from sparsify_runner.modifiers.onnx_pruning import prune_onnx
from sparsify_runner.modifiers.pruning_damage import measure_damage
from sparsify_runner.onnx_graph.layers import find_layers

DIM = 128


def _mlp(tmp_path) -> tuple[onnx.ModelProto, str]:
    """A stem (kept dense: it reads the input) and three same-shape MatMuls: ``robust`` and
    ``tail`` have heavy-tailed weights (most are tiny, pruning them costs little); ``fragile``
    has weights of equal magnitude (every one carries signal). ERK sees identical shapes; only
    a measurement tells them apart."""
    rng = np.random.default_rng(0)

    def heavy_tailed(name: str) -> TensorProto:
        w = rng.standard_normal((DIM, DIM)) * np.where(rng.random((DIM, DIM)) < 0.15, 1.0, 0.02)
        return numpy_helper.from_array((w / np.sqrt(0.15 * DIM)).astype(np.float32), name)

    def flat(name: str) -> TensorProto:
        w = rng.choice([-1.0, 1.0], size=(DIM, DIM)) * (1.0 + 0.05 * rng.standard_normal((DIM, DIM)))
        return numpy_helper.from_array((w / np.sqrt(DIM)).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "W_stem"], ["h0"], name="stem"),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("MatMul", ["a0", "W_robust"], ["h1"], name="robust"),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "W_fragile"], ["h2"], name="fragile"),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "W_tail"], ["y"], name="tail"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, DIM])],
        [flat("W_stem"), heavy_tailed("W_robust"), flat("W_fragile"), heavy_tailed("W_tail")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    return model, str(path)


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((DIM,)).astype(np.float32)} for _ in range(n)]


def _output_error(reference_path: str, model: onnx.ModelProto, tmp_path, samples) -> float:
    path = tmp_path / "pruned.onnx"
    onnx.save(model, str(path))
    ref = np.stack(run_onnx(reference_path, samples))
    out = np.stack(run_onnx(path, samples))
    return float(np.sum((out - ref) ** 2) / np.sum(ref**2))


def test_damage_curves_rank_the_fragile_layer_first(tmp_path):
    model, _ = _mlp(tmp_path)
    layers, _ = find_layers(model)
    curves = measure_damage(model, layers, _samples(16, seed=1)).curves
    assert set(curves) == {"stem", "robust", "fragile", "tail"}
    for points in curves.values():
        assert points[0] == (0.0, 0.0)
        damage = [d for _, d in points]
        assert damage == sorted(damage)  # more zeros, more damage
    at_half = {name: dict(points)[0.5] for name, points in curves.items()}
    assert at_half["fragile"] > 5 * max(at_half["robust"], at_half["tail"])
    # the probe restores every weight it touched
    fresh, _ = _mlp(tmp_path)
    assert all(
        np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(model.graph.initializer, fresh.graph.initializer, strict=True)
    )


def test_obs_probe_measures_what_obs_pruning_loses(tmp_path):
    """The OBS probe re-fits the kept weights on the Hessian of other samples, as the pruning
    pass will: less damage than zeroing at every level, same ranking, and the probe samples
    are not the ones the Hessians come from."""
    model, _ = _mlp(tmp_path)
    layers, _ = find_layers(model)
    probe = _samples(16, seed=1)
    mag = measure_damage(model, layers, probe, levels=(0.3, 0.5, 0.7)).curves
    obs = measure_damage(
        model, layers, probe, method="obs", hessian_samples=_samples(512, seed=3), levels=(0.3, 0.5, 0.7)
    ).curves
    assert set(obs) == set(mag) == {"stem", "robust", "fragile", "tail"}
    for name, points in obs.items():
        damage = [d for _, d in points]
        assert points[0] == (0.0, 0.0) and damage == sorted(damage)
        if name == "stem":  # white inputs (H ~ I): nothing for OBS to re-fit with
            continue
        for (_, d_obs), (_, d_mag) in zip(points[1:], mag[name][1:], strict=True):
            assert d_obs < 0.8 * d_mag, (name, d_obs, d_mag)
    at_half = {name: dict(points)[0.5] for name, points in obs.items()}
    assert at_half["fragile"] > 3 * max(at_half["robust"], at_half["tail"])
    with pytest.raises(ValueError, match="needs calibration samples"):
        measure_damage(model, layers, probe, method="obs")


def test_damage_is_geometric_between_probes_so_allocations_fall_between_them():
    curve = [(0.0, 0.0), (0.3, 1e-3), (0.5, 1e-2), (0.7, 0.1)]
    for s, d in curve[1:]:
        assert interpolate_damage(curve, s) == pytest.approx(d)
    assert interpolate_damage(curve, 0.4) == pytest.approx(10**-2.5)  # geometric mean
    assert interpolate_damage(curve, 0.6) == pytest.approx(10**-1.5)
    assert interpolate_damage(curve, 0.15) == pytest.approx(1e-3 * 0.5 ** (np.log(10) / np.log(5 / 3)))
    assert interpolate_damage(curve, 0.9) == pytest.approx(1.0)  # the last growth rate, extended
    assert interpolate_damage(curve, 0.0) == 0.0
    # a smooth curve lets a layer settle between probe levels (a linear one snaps onto them)
    layers = [LayerProfile("a", 100_000, "normal"), LayerProfile("b", 100_000, "normal")]
    curves = {"a": curve, "b": [(s, 4 * d) for s, d in curve]}
    plan = allocate_by_damage(layers, curves, 0.5)
    rates = [a.sparsity for a in plan.layers]
    assert rates[0] > rates[1] and all(r not in (0.3, 0.5, 0.7) for r in rates), rates
    assert plan.planned == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("method", ["magnitude", "obs"])
def test_sensitivity_allocation_meets_the_target_at_less_damage_than_erk(tmp_path, method):
    model, path = _mlp(tmp_path)
    calibration, holdout = _samples(64, seed=1), _samples(32, seed=2)
    target = 0.4
    erk = prune_onnx(model, calibration, target, method=method)
    measured = prune_onnx(model, calibration, target, method=method, allocation="sensitivity")
    assert measured.achieved_sparsity == pytest.approx(target, abs=2e-3)
    assert erk.achieved_sparsity == pytest.approx(target, abs=2e-3)
    rate = {ly.name: ly.sparsity for ly in measured.layers}
    assert rate["fragile"] < 0.5 * min(rate["robust"], rate["tail"])
    assert any("measured sensitivity" in n for n in measured.notes)
    err_erk = _output_error(path, erk.model, tmp_path, holdout)
    err_measured = _output_error(path, measured.model, tmp_path, holdout)
    assert err_measured < 0.7 * err_erk, (err_measured, err_erk)


def test_damage_allocation_keeps_protected_roles_dense_and_the_budget_exact():
    layers = [
        LayerProfile("stem", 20_000, "first"),
        LayerProfile("dw", 9_000, "depthwise"),
        LayerProfile("a", 100_000, "normal"),
        LayerProfile("b", 100_000, "normal"),
        LayerProfile("fc", 200_000, "classifier"),
    ]
    curves = {
        "a": [(0.0, 0.0), (0.5, 0.001), (0.9, 0.01)],
        "b": [(0.0, 0.0), (0.5, 0.05), (0.9, 0.5)],
        "fc": [(0.0, 0.0), (0.5, 0.01), (0.9, 0.2)],
    }
    plan = allocate_by_damage(layers, curves, 0.5)
    by = {layer.name: a for layer, a in zip(layers, plan.layers, strict=True)}
    assert by["stem"].n_prune == 0 and by["dw"].n_prune == 0
    assert by["a"].sparsity > by["fc"].sparsity > by["b"].sparsity
    total = sum(layer.params for layer in layers)
    assert sum(a.n_prune for a in plan.layers) == pytest.approx(0.5 * total, abs=1)
    assert plan.planned == pytest.approx(0.5, abs=1e-5)
    # with no curves at all it cannot do better than keep the layers dense: say so
    dense = allocate_by_damage(layers, {}, 0.5)
    assert all(a.n_prune == 0 for a in dense.layers) and dense.notes
    assert allocate_by_damage(layers, curves, 0.0).planned == allocate(layers, 0.0).planned == 0.0


def test_unknown_allocation_is_one_clear_error(tmp_path):
    from sparsify_runner.errors import InputError

    model, _ = _mlp(tmp_path)
    with pytest.raises(InputError, match="unknown sparsity allocation 'owl'; choose one of erk, sensitivity"):
        prune_onnx(model, _samples(4, seed=1), 0.5, allocation="owl")


def test_obs_probe_with_few_samples_uses_them_all_and_meets_the_target(tmp_path):
    """Fewer calibration samples than twice the probe's: the OBS Hessians come from all of them."""
    model, _ = _mlp(tmp_path)
    res = prune_onnx(model, _samples(12, seed=1), 0.4, allocation="sensitivity", sensitivity_samples=8)
    assert res.achieved_sparsity == pytest.approx(0.4, abs=2e-3)
    assert any("obs-pruned alone on 8 calibration samples" in n for n in res.notes)
