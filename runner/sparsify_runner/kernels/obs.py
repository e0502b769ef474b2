"""OBS-family one-shot pruning of one weight matrix given its input Hessian (SparseGPT).

The layer computes ``Y = W X`` with ``W`` of shape (rows, cols) and inputs ``X`` of shape
(cols, n). With ``H = 2 X X^T`` the squared output error of a weight change ``dW`` is
``tr(dW H dW^T)``. SparseGPT (Frantar & Alistarh, 2023) prunes column by column: each
pruned weight's error is compensated by updating the not-yet-processed weights of its row
along the Cholesky factor of ``H^-1`` (the OBS update), and the mask is chosen adaptively
per block of ``blocksize`` columns from ``w^2 / [H^-1]_cc^2`` after the updates of the
previous blocks.

Mask granularity: every output row gets the same sparsity in every block (the mask is
chosen per row within a block, not over the whole block as in the SparseGPT reference).
Exported CNNs have batch norm folded into the conv weights, so output channels differ in
scale by orders of magnitude; a block-wide choice zeroes whole low-scale channels and
wrecks the network (measured on MobileNetV2: 52% top-1 agreement at 40% sparsity), while
the per-row choice keeps every channel alive.

Grouped convolutions are handled as a batch of independent problems: ``weight`` is
(groups, rows, cols) and ``hessian`` (groups, cols, cols); every tensor op below carries
the leading group dimension, so a depthwise conv with 960 groups costs one pass, not 960.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .damped_hessian import DEFAULT_PERCDAMP, as_batched, inverse_hessian_cholesky


@dataclass
class ObsResult:
    weight: torch.Tensor
    """Pruned and updated weights, same shape and dtype (float32) as the input."""
    mask: torch.Tensor
    """True where a weight was pruned (set to zero)."""
    damp: float
    """Relative dampening that made the Hessian positive definite."""


def split_counts(n_prune: int, sizes: list[int]) -> list[int]:
    """Split ``n_prune`` over units of the given sizes proportionally, summing exactly to n_prune."""
    total = sum(sizes)
    if total == 0:
        return [0 for _ in sizes]
    rate = n_prune / total
    counts, cum = [], 0
    for size in sizes:
        lo, hi = round(rate * cum), round(rate * (cum + size))
        counts.append(min(size, hi - lo))
        cum += size
    # floating point can leave the last unit one short or over: fix it there
    counts[-1] = min(sizes[-1], max(0, counts[-1] + n_prune - sum(counts)))
    return counts


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n_prune: int | list[int],
    *,
    blocksize: int = 128,
    percdamp: float = DEFAULT_PERCDAMP,
) -> ObsResult:
    """Prune exactly ``n_prune`` weights of ``weight`` and update the rest to keep ``W X``.

    ``weight``: (rows, cols) or (groups, rows, cols); ``hessian``: (cols, cols) or
    (groups, cols, cols), any float dtype (the Cholesky work runs in float64, the
    column sweep in float32). ``n_prune`` is split over (block, group, row) units
    proportionally, so every row of every block gets the same sparsity up to rounding and
    the layer total is exact. A list gives one count per group instead (the sensitivity
    probe prunes copies of a layer to several sparsities in one sweep this way).
    """
    w_in, h_in, squeeze = as_batched(weight, hessian)
    groups, rows, cols = w_in.shape
    if h_in.shape != (groups, cols, cols):
        raise ValueError(f"Hessian shape {tuple(h_in.shape)} does not match weight {tuple(w_in.shape)}")
    if isinstance(n_prune, int):
        if not 0 <= n_prune <= w_in.numel():
            raise ValueError(f"cannot prune {n_prune} of {w_in.numel()} weights")
    elif len(n_prune) != groups or not all(0 <= n <= rows * cols for n in n_prune):
        raise ValueError(f"need one count in [0, {rows * cols}] per group ({groups}), got {n_prune}")
    w = w_in.to(torch.float32).clone()
    dead = torch.diagonal(h_in, dim1=-2, dim2=-1) <= 0  # (groups, cols)
    upper, damp = inverse_hessian_cholesky(h_in, percdamp)
    hinv = upper.to(torch.float32)
    mask = torch.zeros_like(w, dtype=torch.bool)

    blocks = [(i1, min(i1 + blocksize, cols)) for i1 in range(0, cols, blocksize)]
    # one unit per (block, group, row): every output row keeps the same density in every block
    if isinstance(n_prune, int):
        sizes = [i2 - i1 for i1, i2 in blocks for _ in range(groups * rows)]
        unit_counts = torch.tensor(split_counts(n_prune, sizes)).reshape(len(blocks), groups, rows)
    else:
        sizes = [i2 - i1 for i1, i2 in blocks for _ in range(rows)]
        unit_counts = torch.stack(
            [torch.tensor(split_counts(n, sizes)).reshape(len(blocks), rows) for n in n_prune], dim=1
        )
    for b, (i1, i2) in enumerate(blocks):
        count = i2 - i1
        w1 = w[:, :, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[:, i1:i2, i1:i2]
        d1 = torch.diagonal(hinv1, dim1=-2, dim2=-1)  # (groups, count)
        scores = w1.pow(2) / d1.pow(2).unsqueeze(1)
        scores = scores.masked_fill(dead[:, i1:i2].unsqueeze(1), 0.0)  # free to prune
        order = scores.argsort(dim=2, stable=True)
        take = torch.arange(count) < unit_counts[b].unsqueeze(2)
        mask1 = torch.zeros_like(scores, dtype=torch.bool).scatter_(2, order, take)
        for i in range(count):
            col = w1[:, :, i]
            q = col.masked_fill(mask1[:, :, i], 0.0)
            q1[:, :, i] = q
            e = (col - q) / d1[:, i].unsqueeze(1)
            w1[:, :, i:] -= e.unsqueeze(2) * hinv1[:, i, i:].unsqueeze(1)
            err1[:, :, i] = e
        w[:, :, i1:i2] = q1
        mask[:, :, i1:i2] = mask1
        if i2 < cols:
            w[:, :, i2:] -= err1 @ hinv[:, i1:i2, i2:]
    w[mask] = 0.0
    if squeeze:
        return ObsResult(w.squeeze(0), mask.squeeze(0), damp)
    return ObsResult(w, mask, damp)


def relative_output_error(old: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||W X - W' X||^2 / ||W X||^2`` computed from the Hessian (batched over groups)."""
    w_old, h, _ = as_batched(old, hessian)
    w_new, _, _ = as_batched(new, hessian)
    h = h.to(torch.float64)
    delta = (w_old - w_new).to(torch.float64)
    num = torch.einsum("grc,gcd,grd->", delta, h, delta)
    den = torch.einsum("grc,gcd,grd->", w_old.to(torch.float64), h, w_old.to(torch.float64))
    return float(num / den) if float(den) > 0 else 0.0
