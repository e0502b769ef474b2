"""GPTQ: round weights to the INT8 grid so that the layer's output, not each weight, stays close.

Plain round-to-nearest treats every weight alone. GPTQ (Frantar et al., 2023) quantizes the
columns of ``W`` one at a time and, like the OBS pruning in :mod:`.obs`, moves the error of
each rounded weight onto the not-yet-quantized weights of its row along the Cholesky factor
of ``H^-1`` (``H = 2 X X^T`` from calibration inputs), which minimizes ``||W X - Q X||^2``
greedily. It shares :func:`.damped_hessian.inverse_hessian_cholesky` and the (groups, rows, cols)
batching, so depthwise convolutions cost one pass.

The grid is the one onnxruntime's ``quantize_static`` will compute from the weights it is
given: per output channel, symmetric, ``scale = max|w| / qmax`` (qmax 127, or 64 with
``reduce_range``). To make onnxruntime reproduce these integers exactly, every row keeps one
weight at ``+-qmax * scale`` (its largest-magnitude weight, pinned there when its column
comes up), so the scale onnxruntime derives equals the one used here. Weights that are
exactly zero (pruned) stay zero: their column's error is compensated like any other.
"""

from __future__ import annotations

import torch

from .damped_hessian import DEFAULT_PERCDAMP, as_batched, inverse_hessian_cholesky


def symmetric_scales(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-row ``max|w| / qmax`` for (groups, rows, cols) weights (rows of zeros get 1)."""
    absmax = weight.abs().amax(dim=-1)
    return torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))


def round_to_grid(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Round-to-nearest on the same per-row grid (the baseline GPTQ improves on); rows are
    the last-but-one dimension, as in :func:`gptq_quantize`."""
    scale = symmetric_scales(weight.to(torch.float32), qmax).unsqueeze(-1)
    return torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    qmax: int = 127,
    blocksize: int = 128,
    percdamp: float = DEFAULT_PERCDAMP,
) -> torch.Tensor:
    """Weights on the symmetric per-row INT8 grid (returned as float32 multiples of the scale).

    ``weight``: (rows, cols) or (groups, rows, cols); ``hessian``: matching (cols, cols) or
    (groups, cols, cols)."""
    w_in, h_in, squeeze = as_batched(weight, hessian)
    groups, rows, cols = w_in.shape
    if h_in.shape != (groups, cols, cols):
        raise ValueError(f"Hessian shape {tuple(h_in.shape)} does not match weight {tuple(w_in.shape)}")
    w = w_in.to(torch.float32).clone()
    scale = symmetric_scales(w, qmax)  # (groups, rows)
    anchor = w.abs().argmax(dim=-1)  # (groups, rows): the weight that fixes each row's scale
    anchor_value = torch.gather(w, -1, anchor.unsqueeze(-1)).squeeze(-1).sign() * qmax * scale
    zero = w == 0
    hinv = inverse_hessian_cholesky(h_in, percdamp)[0].to(torch.float32)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, :, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i]
            q = torch.clamp(torch.round(col / scale), -qmax, qmax) * scale
            q = torch.where(anchor == i1 + i, anchor_value, q)
            q = q.masked_fill(zero[:, :, i1 + i], 0.0)
            q1[:, :, i] = q
            e = (col - q) / hinv1[:, i, i].unsqueeze(1)
            w1[:, :, i:] -= e.unsqueeze(2) * hinv1[:, i, i:].unsqueeze(1)
            err1[:, :, i] = e
        w[:, :, i1:i2] = q1
        if i2 < cols:
            w[:, :, i2:] -= err1 @ hinv[:, i1:i2, i2:]
    return w.squeeze(0) if squeeze else w
