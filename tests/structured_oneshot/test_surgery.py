"""Graph surgery: dependency groups, channel removal, shapes and outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from sparsify_runner.onnx_graph.channels import (
    Removal,
    find_groups,
    own_parameters,
    remove_channels,
    zero_channels,
)

from .conftest import bn_depthwise_graph, export, residual_concat_net, run_model


def _by_root(scan):
    return {g.root.split("/")[-2] if "/" in g.root else g.root: g for g in scan.groups}


def test_groups_residual_and_concat(tmp_path):
    model = own_parameters(onnx.load(str(export(residual_concat_net(), tmp_path / "rc.onnx", (1, 3, 8, 8)))))
    scan = find_groups(model)
    groups = _by_root(scan)
    assert set(groups) == {"a", "b", "c"}
    # a feeds two convs; b and c meet in the concat: d reads b at offset 0 and c at offset 8
    assert sorted(c.name.split("/")[-2] for c in groups["a"].consumers) == ["b", "c"]
    assert [(c.name.split("/")[-2], c.offset) for c in groups["b"].consumers] == [("d", 0)]
    assert [(c.name.split("/")[-2], c.offset) for c in groups["c"].consumers] == [("d", 8)]
    blocked = {k.split("/")[-2]: v for k, v in scan.blocked.items()}
    assert "Add" in blocked["d"] and "Add" in blocked["f"]  # residual-coupled: left alone
    assert "graph output" in blocked["fc"]


def test_concat_removal_composes_and_matches_zeroed(tmp_path):
    model = own_parameters(onnx.load(str(export(residual_concat_net(), tmp_path / "rc.onnx", (1, 3, 8, 8)))))
    groups = _by_root(find_groups(model))
    removals = [
        Removal(groups["a"], np.array([0, 5])),
        Removal(groups["b"], np.array([1, 2, 7])),
        Removal(groups["c"], np.array([3])),
    ]
    zeroed = zero_channels(model, removals)  # the same channels, exactly zero
    pruned = remove_channels(zeroed, removals)
    onnx.checker.check_model(pruned, full_check=True)
    w = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    d_weight = pruned.graph.node[[n.name for n in pruned.graph.node].index("/d/Conv")].input[1]
    assert w[d_weight].shape == (16, 16 - 4, 1, 1)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(pruned, x), run_model(zeroed, x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(run_model(zeroed, x), run_model(model, x))  # the removal did something


def test_bn_depthwise_mul_gemm_chain():
    model = bn_depthwise_graph()
    scan = find_groups(model)
    groups = {g.root: g for g in scan.groups}
    assert set(groups) == {"conv1", "conv3"} and "graph output" in scan.blocked["fc"]
    g1 = groups["conv1"]
    assert [c.name for c in g1.consumers] == ["conv3"] and len(g1.depthwise) == 1
    sliced = {s.init for s in g1.slices}
    assert {"w1", "b1", "g", "beta", "mu", "var", "w2", "b2", "s", "w3"} <= sliced
    assert [c.name for c in groups["conv3"].consumers] == ["fc"]
    removals = [Removal(g1, np.array([1, 3, 4])), Removal(groups["conv3"], np.array([0, 5]))]
    zeroed = zero_channels(model, removals)
    pruned = remove_channels(zeroed, removals)
    onnx.checker.check_model(pruned, full_check=True)
    dims = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert dims["w1"] == (5, 3, 3, 3) and dims["w2"] == (5, 1, 3, 3) and dims["s"] == (5, 1, 1)
    assert dims["w3"] == (4, 5, 1, 1) and dims["w4"] == (5, 4)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 5
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(pruned, x), run_model(zeroed, x), rtol=1e-5, atol=1e-5)


def test_cannot_remove_every_channel():
    model = bn_depthwise_graph()
    g = {g.root: g for g in find_groups(model).groups}["conv3"]
    with pytest.raises(ValueError, match="all 6 channels"):
        remove_channels(model, [Removal(g, np.arange(6))])


def test_own_parameters_unshares_deduplicated_initializers(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1)).eval()
    for m in net:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.zeros_(m.bias)  # equal biases: the exporter shares one initializer
    model = onnx.load(str(export(net, tmp_path / "shared.onnx", (1, 3, 4, 4))))
    fixed = own_parameters(model)
    assert all(n.op_type != "Identity" for n in fixed.graph.node)
    assert [g.root for g in find_groups(fixed).groups] == [fixed.graph.node[0].name]
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run_model(fixed, x), run_model(model, x), rtol=1e-6)
