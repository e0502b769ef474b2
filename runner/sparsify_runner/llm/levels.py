"""The optim level of a text-generation run as an outcome: a perplexity budget and a search space.

The budget is the largest *relative* perplexity increase against the dense model on held-out
text the level allows (0.05 = perplexity may grow by 5%); ``--max-accuracy-drop`` overrides it
in the same unit. The search space grows with the level as the original promised (0 = the
baseline unchanged; below 0.3 only 8-bit weights, which rarely cost more than a few percent;
from 0.3 on 4-bit weights too; sparsity only for the size objective). A higher level never has
a smaller budget nor a smaller search space (tests/llm/test_policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InputError
from ..spec import Objective
from .schemes import SchemeName, candidates_for

# (optim level, largest relative perplexity increase), linear in between.
PERPLEXITY_BUDGET_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0),
    (0.1, 0.01),
    (0.2, 0.02),
    (0.3, 0.03),
    (0.5, 0.05),
    (0.8, 0.12),
    (1.0, 0.25),
)
FOUR_BIT_FROM = 0.3
"""Levels from here on search 4-bit weights (and, for the size objective, sparsity)."""

BudgetSource = Literal["optim level", "--max-accuracy-drop"]


def perplexity_budget(level: float) -> float:
    """Largest relative perplexity increase an optim level allows (0 at level 0)."""
    if not 0.0 <= level <= 1.0:
        raise InputError(f"optim level {level} is outside [0, 1]; pass --optim-level between 0 and 1")
    points = PERPLEXITY_BUDGET_POINTS
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if level <= x1:
            return round(y0 + (y1 - y0) * (level - x0) / (x1 - x0), 6)
    return points[-1][1]


@dataclass(frozen=True)
class LlmPolicy:
    """One optim level of a text-generation run: the budget and the schemes to measure."""

    level: float
    objective: Objective
    device: Literal["cpu", "cuda"]
    max_perplexity_increase: float
    budget_source: BudgetSource
    schemes: tuple[SchemeName, ...]
    """Most compressed first: the first one within budget ships and the rest are not built."""

    def describe(self) -> str:
        if not self.schemes and self.level == 0:
            return "optim level 0: the dense model ships unchanged (its perplexity is still measured)"
        space = ", ".join(s.value for s in self.schemes) or "nothing (the baseline)"
        goal = "most compressed" if self.objective is Objective.speed else "smallest"
        return (
            f"optim level {self.level:g}: the {goal} model whose held-out perplexity is at most "
            f"{self.max_perplexity_increase:.1%} above the dense model's ({self.budget_source}); "
            f"candidates for {self.device} (most compressed first): {space}"
        )

    def to_dict(self) -> dict:
        return {
            "description": self.describe(),
            "optim_level": self.level,
            "objective": self.objective.value,
            "deploy_device": self.device,
            "metric": "relative perplexity increase on held-out text",
            "max_perplexity_increase": self.max_perplexity_increase,
            # the product's common key for the budget, here in the budget's own unit (report.html reads it)
            "max_accuracy_drop": self.max_perplexity_increase,
            "budget_source": self.budget_source,
            "search_space": [s.value for s in self.schemes],
        }


def llm_policy(
    level: float,
    *,
    objective: Objective = Objective.speed,
    device: Literal["cpu", "cuda"] = "cpu",
    max_increase: float | None = None,
    only: tuple[SchemeName, ...] | None = None,
) -> LlmPolicy:
    """The budget and candidates of a level. ``only`` (the recipe's ``schemes``) keeps just those
    of the level's candidates, in the level's order."""
    budget = perplexity_budget(level) if max_increase is None else float(max_increase)
    source: BudgetSource = "optim level" if max_increase is None else "--max-accuracy-drop"
    if level == 0:
        return LlmPolicy(level, objective, device, 0.0, "optim level", ())
    schemes = candidates_for(device, objective, four_bit=level >= FOUR_BIT_FROM)
    if only is not None:
        schemes = tuple(s for s in schemes if s in only)
    return LlmPolicy(level, objective, device, budget, source, schemes)


def level_table(levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)) -> list[dict]:
    """The level -> budget and candidates table docs/llm.md shows."""
    rows = []
    for level in levels:
        rows.append(
            {
                "optim_level": level,
                "max_perplexity_increase": perplexity_budget(level),
                **{
                    f"{device}/{objective.value}": [
                        s.value for s in llm_policy(level, objective=objective, device=device).schemes
                    ]
                    for device in ("cuda", "cpu")
                    for objective in Objective
                },
            }
        )
    return rows
