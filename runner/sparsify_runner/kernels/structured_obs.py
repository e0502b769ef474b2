"""Structured OBS (ZipLM-style): which input channels of a layer's consumers to remove, and
the least-squares refit of the weights that remain. Plain tensors, no ONNX graph.

Removing root channel ``j`` of a group removes a *set of columns* ``S_j`` from every layer
that reads those channels (a 3x3 conv consumer loses 9 columns per channel). For a
consumer ``Y = W X + b`` with input Hessian ``H = 2/n [X;1][X;1]^T`` (the bias column
makes the refit absorb mean shifts too), the least output error of removing ``S`` with
the remaining weights re-fitted is the structured OBS error
``1/2 sum_rows w_S (H^-1_SS)^-1 w_S^T`` and the refit is
``W <- W - W_S (H^-1_SS)^-1 H^-1_S:`` (exact least squares on the calibration
activations). Channels go greedily, lowest summed relative error over the group's
consumers first, ``step`` at a time, in a few rounds that each re-fit the kept weights and
re-score (so later choices see the compensated weights), as ZipLM does for heads and
neurons. The cumulative errors form the group's error curve used for allocation.

Every solve dampens ``H`` by the policy of :mod:`.damped_hessian`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .damped_hessian import DEFAULT_PERCDAMP, damped_cholesky, damped_solve

FLOAT64_MAX_COLS = 1024
"""Solves run in float64 up to this many Hessian columns, in float32 above: a 3x3 conv reading
512 channels has 4,608 columns, and float64 doubles the largest layers' time for no gain."""


def solve_dtype(cols: int) -> torch.dtype:
    """The precision of the solves against a Hessian with ``cols`` columns."""
    return torch.float64 if cols <= FLOAT64_MAX_COLS else torch.float32


def inverse_blocks(h: torch.Tensor, cols: torch.Tensor, percdamp: float) -> torch.Tensor:
    """The diagonal blocks ``[H^-1]_{S_j S_j}`` (``cols``: (J, m) column sets), float64, from
    ``L^-1`` without forming the whole inverse (``cols^2 m`` instead of ``cols^3``)."""
    chol, _ = damped_cholesky(h, percdamp, dtype=solve_dtype(h.shape[0]))
    linv = torch.linalg.solve_triangular(chol, torch.eye(chol.shape[0], dtype=chol.dtype), upper=False)
    sub = linv[:, cols.reshape(-1)].reshape(linv.shape[0], cols.shape[0], cols.shape[1]).to(torch.float64)
    return torch.einsum("kjm,kjn->jmn", sub, sub)


def least_squares(w: torch.Tensor, h: torch.Tensor, keep: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Weights on the ``keep`` columns that best reproduce ``W X``: ``W H_:K H_KK^-1`` (float64)."""
    h_kk = h.index_select(0, keep).index_select(1, keep)
    rhs = w @ h.index_select(1, keep)
    return damped_solve(rhs, h_kk, percdamp, dtype=solve_dtype(h_kk.shape[0])).to(torch.float64)


def augmented_hessian(h: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """``2/n [X;1][X;1]^T`` from ``H = 2/n X X^T`` and ``E[x]`` (the last column is the bias)."""
    cols = h.shape[-1]
    out = torch.zeros((cols + 1, cols + 1), dtype=torch.float64)
    out[:cols, :cols] = h.to(torch.float64)
    if mean is not None:
        m = mean.reshape(-1).to(torch.float64)
        out[:cols, cols] = 2.0 * m
        out[cols, :cols] = 2.0 * m
    out[cols, cols] = 2.0
    return out


def output_energy(w: torch.Tensor, h: torch.Tensor) -> float:
    """``||W X||^2`` per calibration row up to the Hessian's factor 2: ``1/2 tr(W H W^T)``."""
    w32 = w.to(torch.float32)
    return float(0.5 * ((w32 @ h.to(torch.float32)) * w32).sum(dtype=torch.float64))


@dataclass
class ConsumerProblem:
    """One consumer of a group: weights (rows, cols) over its still-alive columns, the
    matching Hessian, and the columns (into that alive space) of each root channel."""

    weight: torch.Tensor  # float64
    hessian: torch.Tensor  # float64
    columns: torch.Tensor  # (channels, m) long
    energy: float = 0.0
    damp: float | None = None  # relative dampening; None: the caller's percdamp
    biased: bool = False  # the last column is the bias (the Hessian is augmented with ones)


def output_variance(p: ConsumerProblem, w: torch.Tensor) -> float:
    """``sum_r Var[y_r]``: the error scale. Folded-BN biases make ``E[y^2]`` mostly mean, so an
    error relative to it would call removals cheap that wreck the signal."""
    energy = output_energy(w, p.hessian)
    if not p.biased:
        return energy
    mean_out = (w @ p.hessian[:, -1]) / 2.0  # H[:, -1] = 2 [E[x]; 1]
    return max(energy - float((mean_out**2).sum()), 1e-6 * energy)


@dataclass
class Selection:
    order: list[int]  # root channels in removal order
    curve: list[float]  # cumulative relative error after each step (sum over consumers)
    counts: list[int]  # channels removed after each step
    weights: list[torch.Tensor] = field(default_factory=list)  # compensated consumer weights


def select_channels(
    problems: list[ConsumerProblem],
    n_remove: int,
    *,
    step: int = 1,
    rounds: int = 3,
    percdamp: float = DEFAULT_PERCDAMP,
) -> Selection:
    """Greedy structured OBS over the consumers of one group, in ``rounds`` rounds.

    Each round inverts the Hessian of the still-kept columns, re-fits the weights on them
    by least squares (``W_K = W H_:K H_KK^-1``), scores every kept channel by its OBS error
    and drops the lowest-scoring ones (geometrically fewer per round, multiples of
    ``step``). Downdating ``H^-1`` after every single channel, as the exact greedy does,
    costs ``cols^2`` per removed column: minutes for ResNet-50's 3x3 convs on two cores.
    The curve has one point per ``step``: exact errors at round ends, the round's summed
    scores in between. Returns the compensated weights (removed columns exactly zero)."""
    n_channels = int(problems[0].columns.shape[0])
    n_remove = max(0, min(n_remove, n_channels - 1))
    base = [p.weight.to(torch.float64) for p in problems]
    energies = [max(p.energy or output_variance(p, w), 1e-30) for p, w in zip(problems, base, strict=True)]
    alive = np.ones(n_channels, dtype=bool)
    order: list[int] = []
    curve: list[float] = []
    counts: list[int] = []
    prev_err = 0.0
    fitted: list[torch.Tensor] = []
    plan = _round_sizes(n_remove, step, rounds)
    for size in [*plan, 0]:
        fitted = []
        err = 0.0
        scores = torch.zeros(int(alive.sum()), dtype=torch.float64)
        idx = np.flatnonzero(alive)
        for p, w0, e in zip(problems, base, energies, strict=True):
            dead = np.zeros(w0.shape[1], dtype=bool)
            if order:
                dead[p.columns[torch.tensor(order)].reshape(-1).numpy()] = True
            keep = torch.from_numpy(np.flatnonzero(~dead))
            full = torch.zeros_like(w0)
            w_k = least_squares(w0, p.hessian, keep, p.damp or percdamp)
            full[:, keep] = w_k
            err += output_energy(w0 - full, p.hessian) / e  # exact: 1/2 tr(dW H dW^T)
            fitted.append(full)
            if size == 0:
                continue
            remap = -torch.ones(w0.shape[1], dtype=torch.long)
            remap[keep] = torch.arange(len(keep))
            cols = remap[p.columns[torch.from_numpy(idx)]]  # (J, m) into the kept space
            h_kk = p.hessian.index_select(0, keep).index_select(1, keep)
            block = inverse_blocks(h_kk, cols, p.damp or percdamp)
            wj = w_k[:, cols].permute(1, 2, 0)  # (J, m, rows)
            if cols.shape[1] == 1:
                scores += 0.5 * (wj[:, 0, :] ** 2).sum(1) / block[:, 0, 0].clamp_min(1e-30) / e
            else:
                binv, _ = torch.linalg.inv_ex(block)  # batched small inverses (linalg.solve is slow here)
                scores += 0.5 * (wj * torch.bmm(binv, wj)).sum((1, 2)) / e
        if order:  # exact error at the end of the previous round
            curve[-1] = err
        prev_err = err
        if size == 0:
            break
        ranked = torch.argsort(scores)[:size]
        picked = idx[ranked.numpy()]
        cum = torch.cumsum(scores[ranked], 0)
        for j in range(step, size + 1, step):
            counts.append(len(order) + j)
            curve.append(prev_err + float(cum[j - 1]))
        if size % step:
            counts.append(len(order) + size)
            curve.append(prev_err + float(cum[-1]))
        order.extend(int(c) for c in picked)
        alive[picked] = False
    return Selection(order, curve, counts, fitted)


def _round_sizes(n_remove: int, step: int, rounds: int) -> list[int]:
    """Split ``n_remove`` into up to ``rounds`` chunks (multiples of ``step``), largest first."""
    units = n_remove // step
    rest = n_remove - units * step
    sizes = []
    left = units
    for r in range(rounds, 0, -1):
        if left <= 0:
            break
        take = left if r == 1 else max(1, math.ceil(left / 2))
        sizes.append(take * step)
        left -= take
    if rest:
        if sizes:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return sizes
