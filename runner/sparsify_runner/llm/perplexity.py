"""Perplexity on held-out token windows, with bootstrap intervals over windows.

A window's loss is its mean next-token negative log-likelihood; perplexity is
``exp(mean over windows)``. The intervals resample windows (fixed seed: same input, same
interval). A candidate's cost is its *relative perplexity increase* over the dense model on
the same windows; its interval comes from a paired bootstrap (both models' losses resampled
with the same window indices), which is far narrower than the two separate intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Z_LOW, Z_HIGH = 5.0, 95.0  # a 90% interval, as the rest of the product reports
BOOTSTRAP_ROUNDS = 1000
EVAL_BATCH = 8


@dataclass(frozen=True)
class Perplexity:
    value: float
    low: float
    high: float
    windows: int
    tokens: int
    window_nll: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "perplexity": round(self.value, 4),
            "interval": [round(self.low, 4), round(self.high, 4)],
            "windows": self.windows,
            "tokens_scored": self.tokens,
        }


@dataclass(frozen=True)
class Increase:
    """Relative perplexity increase of a candidate over the baseline (0.02 = +2%)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {"increase": round(self.value, 6), "interval": [round(self.low, 6), round(self.high, 6)]}


def _boot_indices(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, n, size=(BOOTSTRAP_ROUNDS, n))


def from_losses(window_nll: list[float], tokens: int) -> Perplexity:
    nll = np.asarray(window_nll, dtype=np.float64)
    boot = np.exp(nll[_boot_indices(len(nll))].mean(axis=1))
    return Perplexity(
        value=float(math.exp(nll.mean())),
        low=float(np.percentile(boot, Z_LOW)),
        high=float(np.percentile(boot, Z_HIGH)),
        windows=len(nll),
        tokens=tokens,
        window_nll=tuple(float(x) for x in nll),
    )


def relative_increase(baseline: Perplexity, candidate: Perplexity) -> Increase:
    """exp(mean(nll_c) - mean(nll_b)) - 1 with a paired bootstrap interval over windows."""
    b = np.asarray(baseline.window_nll, dtype=np.float64)
    c = np.asarray(candidate.window_nll, dtype=np.float64)
    if b.shape != c.shape:
        raise ValueError("baseline and candidate were scored on different windows")
    idx = _boot_indices(len(b))
    boot = np.exp(c[idx].mean(axis=1) - b[idx].mean(axis=1)) - 1.0
    return Increase(
        value=float(math.exp(c.mean() - b.mean()) - 1.0),
        low=float(np.percentile(boot, Z_LOW)),
        high=float(np.percentile(boot, Z_HIGH)),
    )


def measure(model: Any, windows: Any, batch_size: int = EVAL_BATCH) -> Perplexity:
    """Score every window with ``model`` (a transformers causal LM) in inference mode."""
    import torch

    device = next(model.parameters()).device
    losses: list[float] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            targets = batch[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
            ).view(batch.shape[0], -1)
            losses.extend(nll.mean(dim=1).tolist())
    return from_losses(losses, tokens=int(windows.shape[0] * (windows.shape[1] - 1)))
