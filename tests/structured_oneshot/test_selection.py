"""Structured OBS selection + least-squares refit, and the allocation's cost model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from sparsify_runner.kernels.structured_obs import (
    ConsumerProblem,
    augmented_hessian,
    output_energy,
    select_channels,
)
from sparsify_runner.modifiers.channel_selection import CostModel, allocate_channels, prune_channels
from sparsify_runner.onnx_graph.channels import find_groups

from .conftest import bn_depthwise_graph, run_model


def _problem(seed: int = 0, channels: int = 12, per: int = 3, rows: int = 10, n: int = 4000):
    """A consumer whose input channels are correlated (so a refit can recover removed ones)."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(channels // 2, n, generator=g, dtype=torch.float64)
    mix = torch.randn(channels * per, channels // 2, generator=g, dtype=torch.float64)
    x = mix @ latent + 0.1 * torch.randn(channels * per, n, generator=g, dtype=torch.float64) + 0.5
    h = augmented_hessian(2.0 / n * x @ x.T, x.mean(1))
    w = torch.randn(rows, channels * per + 1, generator=g, dtype=torch.float64)
    cols = torch.arange(channels * per).reshape(channels, per)
    return ConsumerProblem(w, h, cols), x


def test_refit_beats_plain_removal_and_zeroes_columns():
    prob, x = _problem()
    sel = select_channels([prob], 6, step=2, rounds=3)
    assert len(set(sel.order)) == 6 and sel.counts == [2, 4, 6]
    w_new = sel.weights[0]
    removed = prob.columns[torch.tensor(sel.order)].reshape(-1)
    assert torch.all(w_new[:, removed] == 0)
    plain = prob.weight.clone()
    plain[:, removed] = 0.0  # same channels, no compensation
    energy = output_energy(prob.weight, prob.hessian)
    err_refit = output_energy(prob.weight - w_new, prob.hessian) / energy
    err_plain = output_energy(prob.weight - plain, prob.hessian) / energy
    assert err_refit < 0.5 * err_plain
    assert abs(sel.curve[-1] - err_refit) < 1e-6 * max(1.0, err_refit) + 1e-9
    assert all(b >= a - 1e-12 for a, b in zip(sel.curve, sel.curve[1:], strict=False))
    # the output reconstruction error measured on the activations agrees
    xa = torch.cat([x, torch.ones(1, x.shape[1], dtype=x.dtype)])
    y, y_new = prob.weight @ xa, w_new @ xa
    assert float(((y - y_new) ** 2).sum() / (y**2).sum()) < err_plain


def test_selection_prefers_redundant_channels():
    g = torch.Generator().manual_seed(3)
    n = 3000
    x = torch.randn(6, n, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:2] + 1e-3 * torch.randn(2, n, generator=g, dtype=torch.float64)])  # 6, 7 copy 0, 1
    h = 2.0 / n * x @ x.T
    w = torch.randn(5, 8, generator=g, dtype=torch.float64)
    sel = select_channels([ConsumerProblem(w, h, torch.arange(8)[:, None])], 2, step=1, rounds=2)
    assert sorted(sel.order) in ([0, 1], [0, 7], [1, 6], [6, 7])  # one of each duplicate pair
    assert sel.curve[-1] < 1e-4


def test_cost_model_is_bilinear_and_allocation_meets_target():
    model = bn_depthwise_graph()
    groups = find_groups(model).groups
    by = {g.root: g for g in groups}
    i1, i3 = by["conv1"].root_index, by["conv3"].root_index
    i_fc = by["conv3"].consumers[0].node_index
    macs = {i1: 100.0, by["conv1"].depthwise[0]: 10.0, i3: 50.0, i_fc: 5.0}
    cm = CostModel(groups, macs)
    cm.apply("conv1", 4)  # half of conv1's 8 channels: conv1, dw and conv3's inputs halve
    cm.apply("conv3", 3)  # half of conv3's 6 outputs
    assert abs(cm.total() - (50 + 5 + 50 * 0.5 * 0.5 + 5 * 0.5)) < 1e-9
    curves = {"conv1": ([2, 4, 6], [0.1, 0.2, 0.9]), "conv3": ([1, 2, 3, 4], [0.01, 0.02, 0.5, 0.6])}
    plan, reached = allocate_channels(groups, curves, macs, macs, target_macs=0.7 * sum(macs.values()))
    assert reached <= 0.7 * sum(macs.values())
    assert plan["conv3"] >= 2 and plan["conv1"] >= 2  # the cheap steps first


def test_prune_channels_on_bn_depthwise_graph():
    model = bn_depthwise_graph()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((3, 8, 8)).astype(np.float32)} for _ in range(24)]
    res = prune_channels(model, calib, 0.4, round_to=1, profile_latency=True)
    onnx.checker.check_model(res.model, full_check=True)
    assert res.macs_after <= 0.6 * res.macs_before + 1
    assert res.channels_removed > 0 and res.kept["conv1"][1] == 8
    x = calib[0]["x"][None]
    assert run_model(res.model, x).shape == (1, 5)
    notes = {ly.name: ly.note for ly in res.layers}
    assert "kept" in notes["conv1"] and "graph output" in notes["fc"]


def test_prune_channels_adds_biases_to_bias_free_consumers(tmp_path):
    import torch

    from .conftest import export

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1, bias=False),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, bias=False),  # consumer of the first, root of the next
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1, bias=False),
    ).eval()
    model = onnx.load(str(export(net, tmp_path / "nobias.onnx", (1, 3, 8, 8))))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((3, 8, 8)).astype(np.float32)} for _ in range(16)]
    res = prune_channels(model, calib, 0.5, round_to=1, profile_latency=False)
    onnx.checker.check_model(res.model, full_check=True)
    assert res.macs_after <= 0.5 * res.macs_before + 1
    assert run_model(res.model, calib[0]["x"][None]).shape == (1, 8, 8, 8)


def test_a_shared_profile_cache_gives_the_same_pruning_without_profiling_again(tmp_path):
    """The outcome search prunes one model to several MAC targets: the latency profile and the
    groups' error curves are measured on the first call only, and the result is the same."""
    from oneshot.conftest import export
    from sparsify_runner.modifiers.channel_selection import prune_channels

    from .conftest import _tiny_net

    model = onnx.load(str(export(_tiny_net(), tmp_path / "net.onnx")))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((3, 16, 16)).astype(np.float32)} for _ in range(64)]
    cache: dict = {}
    first = prune_channels(model, calib, 0.4, round_to=1, profile_cache=cache)
    again = prune_channels(model, calib, 0.4, round_to=1, profile_cache=cache)
    fresh = prune_channels(model, calib, 0.4, round_to=1)
    assert len(cache) == 1 and first.timings_s["profile_s"] > 0 and again.timings_s["profile_s"] == 0.0
    assert again.macs_after == fresh.macs_after == first.macs_after
    for a, b in zip(again.model.graph.initializer, fresh.model.graph.initializer, strict=True):
        assert np.allclose(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b), atol=1e-5)


def test_layer_latencies_are_per_kind_medians_so_a_noisy_profile_cannot_move_the_allocation():
    """conv1 (3x3), dw (depthwise), conv3 (1x1) and fc (Gemm) of the test graph: each layer's
    time is its MACs times its kind's median measured time per MAC; a kind never matched in the
    profile gets the overall median."""
    from sparsify_runner.modifiers.channel_selection import per_kind_times

    model = bn_depthwise_graph()
    names = {n.name: i for i, n in enumerate(model.graph.node)}
    conv1, dw, conv3, fc = (names[k] for k in ("conv1", "dw", "conv3", "fc"))
    macs = {conv1: 1000, dw: 100, conv3: 400, fc: 50}
    times = per_kind_times(model, macs, {conv1: 2.0, dw: 1.0, conv3: 0.4})
    assert times[conv1] == pytest.approx(2.0) and times[dw] == pytest.approx(1.0)
    assert times[conv3] == pytest.approx(0.4)
    assert times[fc] == pytest.approx(50 * np.median([2.0 / 1000, 1.0 / 100, 0.4 / 400]))  # unmatched kind
    assert per_kind_times(model, macs, {}) == {}
