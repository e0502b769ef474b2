"""The choice: candidates in the policy's order (most compressed first), each judged against the
perplexity budget; the first within it ships and the less compressed ones are not built. None
within budget: the dense baseline ships unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .levels import LlmPolicy
from .perplexity import Increase, Perplexity, relative_increase
from .schemes import SchemeName

T = TypeVar("T")


@dataclass(frozen=True)
class Judged(Generic[T]):
    scheme: SchemeName
    outcome: T
    increase: Increase
    within_budget: bool


@dataclass
class SearchResult(Generic[T]):
    judged: list[Judged[T]] = field(default_factory=list)
    skipped: list[SchemeName] = field(default_factory=list)
    """Less compressed candidates not built because a more compressed one was within budget."""

    @property
    def chosen(self) -> Judged[T] | None:
        return next((j for j in self.judged if j.within_budget), None)

    def reason(self, policy: LlmPolicy) -> str:
        budget = f"{policy.max_perplexity_increase:.1%}"
        chosen = self.chosen
        if not policy.schemes:
            return "optim level 0: the dense model ships unchanged"
        if chosen is None:
            worst = ", ".join(f"{j.scheme.value} {j.increase.value:+.1%}" for j in self.judged)
            return (
                f"no candidate within the +{budget} perplexity budget ({worst}): "
                "the dense model ships unchanged"
            )
        more = [j for j in self.judged if j is not chosen]
        over = (
            "; " + ", ".join(f"{j.scheme.value} {j.increase.value:+.1%} was over" for j in more)
            if more
            else ""
        )
        return (
            f"{chosen.scheme.value} is the most compressed candidate within the +{budget} budget "
            f"({chosen.increase.value:+.2%}){over}"
        )


def within(increase: Increase, budget: float) -> bool:
    """The point estimate decides, as elsewhere in the product; the interval is reported."""
    return increase.value <= budget + 1e-12


def search(
    policy: LlmPolicy,
    baseline: Perplexity,
    run: Callable[[SchemeName], T],
    scored: Callable[[T], Perplexity],
) -> SearchResult[T]:
    """Build and judge candidates most compressed first; stop at the first within budget."""
    result: SearchResult[T] = SearchResult()
    for position, scheme in enumerate(policy.schemes):
        outcome = run(scheme)
        increase = relative_increase(baseline, scored(outcome))
        ok = within(increase, policy.max_perplexity_increase)
        result.judged.append(Judged(scheme, outcome, increase, ok))
        if ok:
            result.skipped = list(policy.schemes[position + 1 :])
            break
    return result
