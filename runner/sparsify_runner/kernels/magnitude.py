"""Plain magnitude pruning: zero the ``n_prune`` weights of smallest absolute value.

The selectable baseline for the OBS method: same per-layer allocation, no calibration,
no weight update. Like the OBS mask, the choice is made per output row (channel) so that
every row keeps the same density: with batch norm folded into conv weights, output
channels differ in scale by orders of magnitude and a layer-wide threshold would remove
whole low-scale channels.
"""

from __future__ import annotations

import numpy as np

from .obs import split_counts


def magnitude_mask(matrix: np.ndarray, n_prune: int, *, per_row: bool = True) -> np.ndarray:
    """Boolean mask (True = pruned) of exactly ``n_prune`` small-magnitude weights.

    ``matrix`` has output rows along axis -2 and input columns along axis -1 (leading axes,
    e.g. conv groups, are batch); ``per_row=False`` uses one threshold for the whole tensor.
    """
    if not 0 <= n_prune <= matrix.size:
        raise ValueError(f"cannot prune {n_prune} of {matrix.size} weights")
    mag = np.abs(matrix)
    if not per_row or matrix.ndim < 2:
        mask = np.zeros(mag.size, dtype=bool)
        if n_prune:
            mask[np.argsort(mag.ravel(), kind="stable")[:n_prune]] = True
        return mask.reshape(matrix.shape)
    rows = mag.reshape(-1, mag.shape[-1])
    counts = np.array(split_counts(n_prune, [rows.shape[1]] * rows.shape[0]))
    order = np.argsort(rows, axis=1, kind="stable")
    take = np.arange(rows.shape[1])[None, :] < counts[:, None]
    mask = np.zeros(rows.shape, dtype=bool)
    np.put_along_axis(mask, order, take, axis=1)
    return mask.reshape(matrix.shape)


def magnitude_prune(
    matrix: np.ndarray, n_prune: int, *, per_row: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return (pruned copy of ``matrix``, mask) with exactly ``n_prune`` weights zeroed."""
    mask = magnitude_mask(matrix, n_prune, per_row=per_row)
    pruned = matrix.copy()
    pruned[mask] = 0
    return pruned, mask
