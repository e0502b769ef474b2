"""The optim level policy, in one place for every experiment type.

The original product's mapping: 0 = the baseline unchanged; below 0.3 = INT8 only; from 0.3
on, INT8 plus pruning whose amount grows linearly to 1.0 (a weight sparsity for unstructured
pruning, a share of MACs removed for channel pruning).
"""

from __future__ import annotations

from typing import Literal

from ..errors import InputError
from ..spec import ExperimentType

INT8_ONLY_BELOW = 0.3

# (sparsity at level 0.3, sparsity at level 1.0), linear in between.
SPARSITY_RANGE: dict[ExperimentType, tuple[float, float]] = {
    ExperimentType.one_shot: (0.40, 0.80),
    ExperimentType.training_aware: (0.60, 0.95),
    ExperimentType.sparse_transfer: (0.60, 0.95),
}

# (MACs removed at level 0.3, at level 1.0) for channel pruning, linear in between.
MACS_RANGE: dict[ExperimentType, tuple[float, float]] = {
    ExperimentType.one_shot: (0.30, 0.75),
    ExperimentType.training_aware: (0.30, 0.75),
}

Mode = Literal["baseline", "quantization-only", "unstructured", "channels"]


def _check(level: float) -> None:
    if not 0.0 <= level <= 1.0:
        raise InputError(f"optim level {level} is outside [0, 1]; pass --optim-level between 0 and 1")


def _linear(level: float, low: float, high: float) -> float:
    return round(low + (high - low) * (level - INT8_ONLY_BELOW) / (1.0 - INT8_ONLY_BELOW), 6)


def prunes(level: float) -> bool:
    """Whether an optim level prunes at all (below 0.3 it only quantizes)."""
    return level >= INT8_ONLY_BELOW


def sparsity_for_level(exp_type: ExperimentType, level: float) -> float:
    """Target unstructured sparsity for an optim level: 0 below 0.3, then linear to 1.0."""
    _check(level)
    return _linear(level, *SPARSITY_RANGE[exp_type]) if prunes(level) else 0.0


def macs_reduction_for_level(exp_type: ExperimentType, level: float) -> float:
    """Fraction of MACs channel pruning removes at an optim level: 0 below 0.3, then linear."""
    _check(level)
    return _linear(level, *MACS_RANGE[exp_type]) if prunes(level) else 0.0


def int8_wanted(quantize: str | bool, level: float) -> bool:
    """The recipe's ``quantize`` setting: ``auto`` = INT8 at every level above 0."""
    return level > 0 if quantize == "auto" else bool(quantize)


def training_mode(level: float, structure: str) -> Mode:
    """What a training-aware run at this level does."""
    if level == 0:
        return "baseline"
    if not prunes(level):
        return "quantization-only"
    return "channels" if structure == "channels" else "unstructured"
