"""Streaming layer Hessians ``H = 2/n * sum x x^T`` from captured layer inputs.

* Linear layers (Gemm, MatMul with a constant weight): every row of the input
  (``(..., K)`` flattened to ``(n, K)``; Gemm ``transA`` honoured) is one ``x``.
* Convolutions: the input is unfolded im2col-style (``torch.nn.functional.unfold``) with the
  conv's kernel, stride, dilation and padding (explicit, asymmetric or ``auto_pad``); every
  output position is one ``x`` of length ``C/groups * prod(kernel)``, per group, so the
  result is one Hessian per group, shape (groups, cols, cols).

Row subsampling: a conv at 56x56 has 3,136 positions per sample; with 256 samples the
exact Hessian would cost ``800k * cols^2`` flops per layer, and accumulation dominates the
run time. Neighbouring patches are strongly correlated, so each layer keeps at most
``min(max_rows, max(min_rows, rows_per_col * cols))`` rows in total (defaults 65,536,
16,384 and 16: at least 16 rows per Hessian column, enough for a well-conditioned
estimate once dampened), taken as a uniformly random, seeded subset of the positions of
each sample (same count per sample). The same cap applies to the token rows of linear
layers. With the upstream correction (dense cross term ``X_dense X^T`` accumulated too, so
twice the products) the budget is halved to keep the run time.
Products run in float32 over chunks of rows and are summed into a float64 accumulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MAX_ROWS = 65_536
MIN_ROWS = 16_384
ROWS_PER_COL = 16
_FLUSH_ROWS = 8_192


@dataclass(frozen=True)
class InputSpec:
    """How a layer reads its input; layers with equal specs on one tensor share a Hessian."""

    kind: str  # "linear" | "conv"
    cols: int  # input features per group (linear: K; conv: C/groups * prod(kernel))
    groups: int = 1
    trans_a: bool = False
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    auto_pad: str = "NOTSET"
    conv_1d: bool = False


def _same_pads(size: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def unfold_conv_input(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(B, C, H, W) conv input -> (B, C*kh*kw, L) patches as the conv sees them."""
    if spec.conv_1d:
        x = x.unsqueeze(2)
    top, left, bottom, right = spec.pads
    if spec.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        upper = spec.auto_pad == "SAME_UPPER"
        top, bottom = _same_pads(x.shape[2], spec.kernel[0], spec.stride[0], spec.dilation[0], upper)
        left, right = _same_pads(x.shape[3], spec.kernel[1], spec.stride[1], spec.dilation[1], upper)
    elif spec.auto_pad == "VALID":
        top = left = bottom = right = 0
    if top or left or bottom or right:
        x = F.pad(x, (left, right, top, bottom))
    return F.unfold(x, spec.kernel, dilation=spec.dilation, stride=spec.stride)


class HessianAccumulator:
    """Accumulates the Hessian of one :class:`InputSpec` over calibration batches."""

    def __init__(
        self,
        spec: InputSpec,
        n_samples: int,
        max_rows: int = DEFAULT_MAX_ROWS,
        seed: int = 0,
        *,
        rows_scale: float = 1.0,
    ):
        self.spec = spec
        # rows_scale < 1 when the dense cross term is also accumulated (twice the products)
        budget = int(rows_scale * min(max_rows, max(MIN_ROWS, ROWS_PER_COL * spec.cols)))
        self.per_sample = max(1, math.ceil(budget / max(1, n_samples)))
        self.hessian = torch.zeros((spec.groups, spec.cols, spec.cols), dtype=torch.float64)
        self.column_sum = torch.zeros((spec.groups, spec.cols), dtype=torch.float64)
        self.rows = 0
        self.cross: torch.Tensor | None = None
        self.dense_sq = 0.0  # ||X_dense||^2 and ||X_dense - X||^2 over the kept rows
        self.diff_sq = 0.0
        self._pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # (groups, cols, m) chunks
        self._pending_rows = 0
        self._gen = torch.Generator().manual_seed(seed)

    def _pick(self, n: int) -> torch.Tensor | None:
        if n <= self.per_sample:
            return None
        return torch.randperm(n, generator=self._gen)[: self.per_sample]

    def _columns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (groups, cols, rows) tensor per batch element, rows not yet subsampled."""
        spec = self.spec
        if spec.kind == "linear":
            if spec.trans_a:
                x = x.transpose(-1, -2)
            return [x.reshape(-1, x.shape[-1]).t().unsqueeze(0)]
        return [
            unfold_conv_input(x[b : b + 1], spec)[0].reshape(spec.groups, spec.cols, -1)
            for b in range(x.shape[0])
        ]

    def add(self, array: np.ndarray, dense: np.ndarray | None = None) -> None:
        """Add the layer input for one calibration batch (as the layer receives it).

        ``dense``: the same tensor computed by the unpruned model, for the cross term
        ``X_dense X^T`` used to correct upstream error (same rows are subsampled).
        """
        xs = self._columns(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
        ds: list[torch.Tensor | None] = [None] * len(xs)
        if dense is not None:
            if self.cross is None:
                self.cross = torch.zeros_like(self.hessian)
            ds = list(self._columns(torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))))
        for x, d in zip(xs, ds, strict=True):
            idx = self._pick(x.shape[2])
            if idx is not None:
                x = x.index_select(2, idx)
                d = d.index_select(2, idx) if d is not None else None
            self._push(x, d)

    def _push(self, chunk: torch.Tensor, dense: torch.Tensor | None) -> None:
        if chunk.shape[1] != self.spec.cols:
            raise ValueError(
                f"layer input has {chunk.shape[1]} features per group, expected {self.spec.cols}"
            )
        self._pending.append((chunk, dense))
        self._pending_rows += chunk.shape[2]
        if self._pending_rows >= _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        xs = torch.cat([c for c, _ in self._pending], dim=2)
        self.hessian += torch.bmm(xs, xs.transpose(1, 2)).to(torch.float64)
        self.column_sum += xs.sum(dim=2, dtype=torch.float64)
        if self.cross is not None:
            ds = torch.cat([d for _, d in self._pending], dim=2)
            self.cross += torch.bmm(ds, xs.transpose(1, 2)).to(torch.float64)
            self.dense_sq += float(ds.double().pow(2).sum())
            self.diff_sq += float((ds - xs).double().pow(2).sum())
        self.rows += xs.shape[2]
        self._pending, self._pending_rows = [], 0

    def drift(self) -> float:
        """Relative squared difference of the inputs from the dense model's, ``||X_d - X||^2 / ||X_d||^2``."""
        self._flush()
        return self.diff_sq / self.dense_sq if self.dense_sq > 0 else 0.0

    def finalize_cross(self) -> torch.Tensor | None:
        """``2/n X_dense X^T`` when dense inputs were given, else None."""
        self._flush()
        return None if self.cross is None else self.cross * (2.0 / max(1, self.rows))

    def mean(self) -> torch.Tensor:
        """Mean input ``E[x]`` over the kept rows, (groups, cols) float64 (bias correction)."""
        self._flush()
        return self.column_sum / max(1, self.rows)

    def finalize(self) -> torch.Tensor:
        """The Hessian ``2/n X X^T``, (groups, cols, cols) float64."""
        self._flush()
        return self.hessian * (2.0 / max(1, self.rows))
