"""The optim level policy, in one place for every experiment type.

The level buys an outcome: one accuracy budget for the whole result against the baseline
(:func:`accuracy_budget`) and a search space (:class:`OutcomePolicy`) that one-shot measures
on the deployment target before it ships the fastest (or smallest) candidate within the
budget. The original product's promises hold: 0 = the baseline unchanged; below 0.3 = no
pruning (INT8 only); a higher level never has a smaller budget nor a smaller search space.
The most ambitious pruning point grows linearly from 0.3 to 1.0 (a weight sparsity for
unstructured pruning, a share of MACs removed for channel pruning); training-aware prunes to
that point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InputError
from ..spec import ExperimentType, Objective

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

# (optim level, largest accuracy drop against the baseline), linear in between: 1 point at 0.5.
BUDGET_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (0.1, 0.003),
    (0.2, 0.005),
    (0.3, 0.006),
    (0.5, 0.01),
    (0.8, 0.02),
    (1.0, 0.03),
)
# The pruning amounts one-shot tries, up to the level's most ambitious point.
MACS_STEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SPARSITY_STEPS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class OutcomePolicy:
    """One optim level as an outcome: the budget and the candidates one-shot measures."""

    level: float
    objective: Objective
    max_accuracy_drop: float
    """Largest drop of the headline metric against the baseline (0.01 = 1 point)."""
    budget_source: Literal["optim level", "--max-accuracy-drop"]
    int8: bool
    macs_reductions: tuple[float, ...]
    """Channel pruning candidates (share of MACs removed), ascending."""
    sparsities: tuple[float, ...]
    """Unstructured pruning candidates (weight sparsity), ascending; only for the size objective
    or a runtime that turns zeros into speed (onnxruntime does not)."""

    @property
    def searches(self) -> bool:
        return self.int8 or bool(self.macs_reductions) or bool(self.sparsities)

    def describe(self) -> str:
        space = ["INT8"] if self.int8 else []
        if self.macs_reductions:
            space.append(
                "channels " + "/".join(f"{m:.0%}" for m in self.macs_reductions) + " of MACs removed"
            )
        if self.sparsities:
            space.append("unstructured " + "/".join(f"{s:.0%}" for s in self.sparsities))
        what = " + ".join(space) if space else "nothing (the baseline)"
        return (
            f"optim level {self.level:g}: the "
            f"{'fastest' if self.objective is Objective.speed else 'smallest'} "
            f"model within {self.max_accuracy_drop * 100:.3g} point(s) of the baseline "
            f"({self.budget_source}); candidates: {what}, and their combinations with INT8"
        )


def _check(level: float) -> None:
    if not 0.0 <= level <= 1.0:
        raise InputError(f"optim level {level} is outside [0, 1]; pass --optim-level between 0 and 1")


def _linear(level: float, low: float, high: float) -> float:
    return round(low + (high - low) * (level - INT8_ONLY_BELOW) / (1.0 - INT8_ONLY_BELOW), 6)


def accuracy_budget(level: float) -> float:
    """Largest accuracy drop against the baseline an optim level allows (0 at level 0)."""
    _check(level)
    for (x0, y0), (x1, y1) in zip(BUDGET_POINTS, BUDGET_POINTS[1:], strict=False):
        if level <= x1:
            return round(y0 + (y1 - y0) * (level - x0) / (x1 - x0), 6)
    return BUDGET_POINTS[-1][1]


def outcome_policy(
    level: float,
    *,
    objective: Objective = Objective.speed,
    max_accuracy_drop: float | None = None,
    int8: bool = True,
    structure: str = "unstructured",
    zeros_are_fast: bool = False,
    sparsity: float | None = None,
    macs_reduction: float | None = None,
) -> OutcomePolicy:
    """The one-shot search space and budget of a level. ``structure='channels'`` restricts
    pruning to channels; unstructured sparsity is searched for the size objective or a runtime
    where ``zeros_are_fast``; an explicit recipe ``sparsity`` / ``macs_reduction`` replaces that
    family's steps with the one value (still held to the budget)."""
    _check(level)
    budget = accuracy_budget(level) if max_accuracy_drop is None else float(max_accuracy_drop)
    source: Literal["optim level", "--max-accuracy-drop"] = (
        "optim level" if max_accuracy_drop is None else "--max-accuracy-drop"
    )
    if level == 0:
        return OutcomePolicy(level, objective, 0.0, "optim level", False, (), ())
    top_macs = macs_reduction_for_level(ExperimentType.one_shot, level)
    top_sparsity = sparsity_for_level(ExperimentType.one_shot, level)
    macs = tuple(m for m in MACS_STEPS if m <= top_macs + 1e-9)
    sparse = tuple(s for s in SPARSITY_STEPS if s <= top_sparsity + 1e-9)
    if macs_reduction is not None:
        macs = (macs_reduction,) if macs_reduction > 0 else ()
    if sparsity is not None:
        sparse = (sparsity,) if sparsity > 0 else ()
    wants_unstructured = structure != "channels" and (
        objective is Objective.size or zeros_are_fast or sparsity is not None
    )
    if not wants_unstructured:
        sparse = ()
    if structure != "channels" and objective is Objective.size and macs_reduction is None:
        macs = ()  # smallest: zeros compress; removing channels is for speed
    return OutcomePolicy(level, objective, budget, source, int8, macs, sparse)


def level_table(levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)) -> list[dict]:
    """The level -> budget and search space table the docs and report.html show."""
    rows = []
    for level in levels:
        speed = outcome_policy(level)
        size = outcome_policy(level, objective=Objective.size)
        rows.append(
            {
                "optim_level": level,
                "max_accuracy_drop": speed.max_accuracy_drop,
                "int8": speed.int8,
                "macs_reductions": list(speed.macs_reductions),
                "size_sparsities": list(size.sparsities),
            }
        )
    return rows


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
