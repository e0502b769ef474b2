"""The OBS/SparseGPT math on single layers: exact masks and better reconstruction than magnitude."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sparsify_runner.kernels.hessian import HessianAccumulator, InputSpec, unfold_conv_input
from sparsify_runner.kernels.magnitude import magnitude_prune
from sparsify_runner.kernels.obs import relative_output_error, sparsegpt_prune, split_counts


def _correlated_inputs(cols: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scale = torch.rand(cols, generator=g) * 2 + 0.1  # features of different energy
    return (mix @ torch.randn(cols, n, generator=g)) * scale[:, None]


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_obs_reconstructs_linear_layer_better_than_magnitude(sparsity: float) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g)
    x = _correlated_inputs(96, 4000)
    acc = HessianAccumulator(InputSpec(kind="linear", cols=96), n_samples=1, max_rows=10**6)
    acc.add(x.t().numpy())
    h = acc.finalize()
    assert torch.allclose(h, 2 * (x @ x.t()).double() / x.shape[1], rtol=1e-4, atol=1e-3)

    n_prune = round(sparsity * w.numel())
    res = sparsegpt_prune(w, h, n_prune, blocksize=32)
    mag, mag_mask = magnitude_prune(w.numpy(), n_prune)
    assert int(res.mask.sum()) == n_prune == int(mag_mask.sum())
    assert int((res.weight == 0).sum()) == n_prune
    assert torch.equal(res.weight == 0, res.mask)

    err_obs = torch.linalg.norm(w @ x - res.weight @ x)
    err_mag = torch.linalg.norm(w @ x - torch.from_numpy(mag) @ x)
    assert err_obs < 0.8 * err_mag
    rel = relative_output_error(w, res.weight, h)
    assert rel == pytest.approx(float(err_obs**2 / torch.linalg.norm(w @ x) ** 2), rel=1e-3)


@pytest.mark.parametrize("groups", [1, 4, 24])
def test_obs_reconstructs_conv_layer_better_than_magnitude(groups: int) -> None:
    torch.manual_seed(2)
    cin, cout = 24, 48
    conv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1, dilation=1, groups=groups)
    x = F.avg_pool2d(torch.randn(16, cin, 20, 20), 3, stride=1, padding=1)  # spatially correlated
    spec = InputSpec(
        kind="conv", cols=cin // groups * 9, groups=groups, kernel=(3, 3), stride=(2, 2), pads=(1, 1, 1, 1)
    )
    acc = HessianAccumulator(spec, n_samples=16, max_rows=10**6)
    acc.add(x.numpy())
    h = acc.finalize()
    w = conv.weight.detach().reshape(groups, cout // groups, -1)
    n_prune = round(0.6 * w.numel())
    res = sparsegpt_prune(w, h, n_prune, blocksize=64)
    assert int(res.mask.sum()) == n_prune
    mag, _ = magnitude_prune(conv.weight.detach().numpy(), n_prune)

    def out(weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight.reshape(conv.weight.shape), stride=2, padding=1, groups=groups)

    ref = out(conv.weight.detach())
    err_obs = torch.linalg.norm(ref - out(res.weight))
    err_mag = torch.linalg.norm(ref - out(torch.from_numpy(mag)))
    assert err_obs < err_mag


@pytest.mark.parametrize(
    ("spec_kwargs", "conv_kwargs"),
    [
        ({"stride": (1, 1), "pads": (1, 1, 1, 1)}, {"stride": 1, "padding": 1}),
        (
            {"stride": (2, 1), "dilation": (2, 2), "pads": (2, 2, 2, 2)},
            {"stride": (2, 1), "padding": 2, "dilation": 2},
        ),
    ],
)
@pytest.mark.parametrize("groups", [1, 3])
def test_unfold_matches_conv(spec_kwargs: dict, conv_kwargs: dict, groups: int) -> None:
    """The im2col layout (channel-major, per group) is exactly what the conv computes."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11)
    weight = torch.randn(12, 6 // groups, 3, 3)
    spec = InputSpec(kind="conv", cols=6 // groups * 9, groups=groups, kernel=(3, 3), **spec_kwargs)
    patches = unfold_conv_input(x, spec)  # (B, C*9, L)
    ref = F.conv2d(x, weight, groups=groups, **conv_kwargs)
    wg = weight.reshape(groups, 12 // groups, -1)
    pg = patches.reshape(2, groups, spec.cols, -1)
    y = torch.einsum("grc,bgcl->bgrl", wg, pg).reshape(ref.shape)
    assert torch.allclose(y, ref, atol=1e-4)


def test_asymmetric_and_same_padding() -> None:
    x = torch.randn(1, 2, 7, 7)
    asym = InputSpec(kind="conv", cols=18, kernel=(3, 3), pads=(0, 1, 2, 0))
    assert unfold_conv_input(x, asym).shape[-1] == (7 + 2 - 2) * (7 + 1 - 2)
    same = InputSpec(kind="conv", cols=18, kernel=(3, 3), stride=(2, 2), auto_pad="SAME_UPPER")
    assert unfold_conv_input(x, same).shape[-1] == 4 * 4


def test_subsampling_caps_rows_and_keeps_hessian_close() -> None:
    x = F.avg_pool2d(torch.randn(8, 4, 32, 32), 3, stride=1, padding=1)
    spec = InputSpec(kind="conv", cols=36, kernel=(3, 3), pads=(1, 1, 1, 1))
    full = HessianAccumulator(spec, n_samples=8, max_rows=10**7)
    sub = HessianAccumulator(spec, n_samples=8, max_rows=2048)
    full.add(x.numpy())
    sub.add(x.numpy())
    hf, hs = full.finalize(), sub.finalize()
    assert full.rows == 8 * 32 * 32 and sub.rows == 2048
    assert torch.linalg.norm(hf - hs) / torch.linalg.norm(hf) < 0.1


def test_dead_inputs_are_pruned_first_and_counts_stay_exact() -> None:
    w = torch.randn(8, 16)
    x = torch.randn(16, 500)
    x[3] = 0  # a dead input channel (e.g. after ReLU)
    h = 2 * (x @ x.t()).double() / 500
    res = sparsegpt_prune(w, h, 20)
    assert int(res.mask.sum()) == 20
    assert bool(res.mask[:, 3].all())


def test_zero_sparsity_is_identity_and_bad_counts_raise() -> None:
    w = torch.randn(4, 8)
    h = torch.eye(8, dtype=torch.float64)
    assert torch.allclose(sparsegpt_prune(w, h, 0).weight, w)
    with pytest.raises(ValueError):
        sparsegpt_prune(w, h, 33)
    with pytest.raises(ValueError):
        magnitude_prune(w.numpy(), -1)


def test_split_counts_is_exact() -> None:
    for n, sizes in [(10, [3, 3, 4]), (0, [5, 5]), (7, [1] * 7), (123, [64] * 9 + [7])]:
        counts = split_counts(n, sizes)
        assert sum(counts) == n
        assert all(0 <= c <= s for c, s in zip(counts, sizes, strict=True))
    assert np.ptp(split_counts(50, [10] * 10)) == 0


def test_upstream_correction_recovers_dense_output() -> None:
    """Inputs drifted by upstream pruning: pruning the corrected weights lands closer to the
    dense layer's output ``W X_dense`` than pruning ``W`` itself."""
    from sparsify_runner.kernels.damped_hessian import correct_to_dense

    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 64, generator=g)
    x_dense = _correlated_inputs(64, 3000, seed=6)
    drift = torch.randn(64, 64, generator=g) * 0.15
    x = x_dense + drift @ x_dense  # what the layer sees after earlier layers were pruned
    acc = HessianAccumulator(InputSpec(kind="linear", cols=64), n_samples=1, max_rows=10**6)
    acc.add(x.t().numpy(), x_dense.t().numpy())
    h, cross = acc.finalize(), acc.finalize_cross()
    assert cross is not None and acc.drift() > 0.01
    target = w @ x_dense
    n = round(0.5 * w.numel())
    plain = sparsegpt_prune(w, h, n).weight
    corrected = sparsegpt_prune(correct_to_dense(w, h, cross), h, n).weight
    assert int((corrected == 0).sum()) == n
    assert torch.linalg.norm(target - corrected @ x) < 0.8 * torch.linalg.norm(target - plain @ x)


def test_per_group_counts_prune_stacked_copies_like_separate_calls() -> None:
    """The sensitivity probe prunes copies of one layer to several sparsities in one sweep."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 40, generator=g)
    x = _correlated_inputs(40, 2000, seed=4)
    h = (2 * x @ x.t() / x.shape[1]).double()
    counts = [0, 160, 320, 480]
    stacked = sparsegpt_prune(w.repeat(4, 1, 1), h.repeat(4, 1, 1), counts, blocksize=16)
    for i, n in enumerate(counts):
        alone = sparsegpt_prune(w, h, n, blocksize=16)
        assert int(stacked.mask[i].sum()) == n
        assert torch.equal(stacked.mask[i], alone.mask)
        assert torch.allclose(stacked.weight[i], alone.weight, atol=1e-5)
    with pytest.raises(ValueError, match="one count"):
        sparsegpt_prune(w.repeat(2, 1, 1), h.repeat(2, 1, 1), [10, 20, 30])
    with pytest.raises(ValueError, match="one count"):
        sparsegpt_prune(w.repeat(2, 1, 1), h.repeat(2, 1, 1), [10, 641])
