"""Solving with a calibration Hessian: the one dampening policy and the factorizations built on it.

A layer Hessian ``H = 2 X X^T`` is positive semi-definite and often singular (inputs that are
always zero, fewer calibration rows than columns). Every solve against it in the kernels
goes through this module and so dampens it the same way:

* a column whose input is always zero ("dead", zero diagonal) gets a unit diagonal: it
  carries no output and nothing couples to it, so the matrix stays invertible;
* ``percdamp * mean(diag(H))`` is added to the diagonal (``percdamp`` relative, 0.01 by
  default); while the Cholesky factorization still fails the dampening grows tenfold, up to
  ``MAX_TRIES`` factorizations;
* a layer with fewer calibration rows than Hessian columns (a classifier after global
  pooling sees one row per sample) is dampened ``cols / rows`` times more (:func:`obs_damp`),
  so its update fits the data rather than the calibration set.

Every function takes a (cols, cols) Hessian or a batch of them (groups, cols, cols).
"""

from __future__ import annotations

import torch

DEFAULT_PERCDAMP = 0.01
MAX_TRIES = 6
"""Factorizations tried, the dampening growing tenfold after each failure."""


def obs_damp(percdamp: float, cols: int, rows: int, adaptive: bool = True) -> float:
    """The relative dampening of a layer with ``rows`` calibration rows and ``cols`` Hessian
    columns: scaled up with ``cols / rows`` when ``H`` is rank-deficient (``adaptive``)."""
    return percdamp * max(1.0, cols / max(1, rows)) if adaptive else percdamp


def as_batched(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``weight`` as (groups, rows, cols) and ``hessian`` as (groups, cols, cols); True when
    the inputs were a single unbatched problem (the caller squeezes its result back)."""
    if weight.dim() == 2:
        if hessian.dim() == 3 and hessian.shape[0] == 1:
            hessian = hessian[0]
        if hessian.dim() != 2:
            raise ValueError("a 2-D weight needs a 2-D Hessian")
        return weight.unsqueeze(0), hessian.unsqueeze(0), True
    if weight.dim() != 3 or hessian.dim() != 3:
        raise ValueError("weight must be (rows, cols) or (groups, rows, cols)")
    return weight, hessian, False


def _live_copy(hessian: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``hessian`` in ``dtype`` with dead columns given a unit diagonal, and the
    mean of each matrix's diagonal (shape (..., 1)): the scale the dampening is relative to."""
    h = hessian.to(dtype).clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    diag[diag <= 0] = 1.0
    return h, diag.mean(dim=-1, keepdim=True)


def _factor(h: torch.Tensor, scale: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of ``h + damp * scale * I``, retrying with a tenfold ``damp``."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    damp = percdamp
    for _ in range(MAX_TRIES):
        # the shift is formed in float64 and rounded once to the working precision
        shift = (damp * scale.to(torch.float64)).to(h.dtype)
        chol, info = torch.linalg.cholesky_ex(h + shift.unsqueeze(-1) * eye)
        if int(info.abs().sum()) == 0:
            return chol, damp
        damp *= 10.0
    raise RuntimeError(f"Hessian not positive definite even with dampening {damp / 10:g}")


def damped_cholesky(
    hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP, *, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor ``L`` of the dampened ``H`` (``L L^T``), computed in ``dtype``,
    and the relative dampening that made ``H`` positive definite."""
    h, scale = _live_copy(hessian, dtype)
    return _factor(h, scale, percdamp)


def inverse_hessian_cholesky(
    hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of the dampened ``H^-1`` (``U^T U = H^-1``), in float64,
    and the relative dampening used: what the OBS / GPTQ column sweeps walk along."""
    h, scale = _live_copy(hessian, torch.float64)
    # Without forming H^-1: with P the reversal permutation and P H P = L L^T, U = P L^-1 P is
    # upper triangular and U^T U = H^-1. One Cholesky and one triangular solve; much cheaper
    # than cholesky_inverse + a second Cholesky. Reversal leaves the diagonal's mean as it is.
    chol, damp = _factor(h.flip(-1, -2), scale, percdamp)
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    return inv.flip(-1, -2), damp


def damped_solve(
    rhs: torch.Tensor,
    hessian: torch.Tensor,
    percdamp: float = DEFAULT_PERCDAMP,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``rhs H^-1`` for the dampened ``H`` (``rhs``: (..., rows, cols)), solved in ``dtype``
    through the Cholesky factor: the least-squares weights whose outputs on the calibration
    inputs best match the ones ``rhs`` describes. The result is in ``dtype``."""
    chol, _ = damped_cholesky(hessian, percdamp, dtype=dtype)
    return torch.cholesky_solve(rhs.to(dtype).transpose(-1, -2), chol).transpose(-1, -2)


def correct_to_dense(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    cross: torch.Tensor,
    percdamp: float = DEFAULT_PERCDAMP,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Least-squares weights ``W_c`` with ``W_c X ~= W X_dense`` (the refit to the dense model).

    ``X`` are the layer inputs with the earlier layers pruned, ``X_dense`` the dense model's;
    ``hessian = 2 X X^T``, ``cross = 2 X_dense X^T`` (or both augmented with a row of ones
    when the last column is a bias). ``W_c = W C H^-1`` (H dampened). Since
    ``||W X_d - W' X||^2 = ||W X_d - W_c X||^2 + ||(W_c - W') X||^2``, pruning ``W_c`` with
    OBS also undoes the error accumulated upstream instead of faithfully reproducing it.
    ``W C`` is formed in float64, the solve runs in ``dtype``; the result is float32, or
    float64 for a float64 ``weight``."""
    w, h, squeeze = as_batched(weight, hessian)
    c = cross if cross.dim() == 3 else cross.unsqueeze(0)
    wc = w.to(torch.float64) @ c.to(torch.float64)
    out = damped_solve(wc, h, percdamp, dtype=dtype).to(torch.promote_types(weight.dtype, torch.float32))
    return out.squeeze(0) if squeeze else out
