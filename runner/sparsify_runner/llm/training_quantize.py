"""The one-shot quantization choice on a fine-tuned causal LM (the training pathways' last step).

The candidates, the budget and the choice are the one-shot ones (``levels.llm_policy``,
``choose.search``, ``compress.run_candidate``), judged against the *input* model's held-out
perplexity: quantization may spend what fine-tuning left of the level's budget. When
fine-tuning already spent it all, quantization may add at most the recipe's
``max_int8_accuracy_drop`` (as a relative perplexity increase) over the fine-tuned model, as the
other training pathways allow INT8 that much over their FP32 model.

A pruned model is quantized with round-to-nearest (llm-compressor's ``QuantizationModifier``
with the same schemes): GPTQ's error feedback would write into the pruned weights, rounding to
nearest with symmetric integers keeps every zero a zero. The sparse one-shot scheme is not a
candidate here: the sparsity came from training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import perplexity
from .choose import SearchResult, search
from .compress import CandidateOutcome, run_candidate
from .levels import LlmPolicy
from .schemes import SCHEMES, SchemeName, build_recipe


@dataclass
class QuantizationChoice:
    """What the search did and what it was judged against."""

    result: SearchResult[CandidateOutcome]
    reference: perplexity.Perplexity
    """The perplexity the candidates' increase is measured against."""
    budget: float
    """Largest relative increase over ``reference`` a candidate may have."""
    reason: str


def training_candidates(policy: LlmPolicy) -> LlmPolicy:
    """The level's schemes without the one-shot sparse scheme (training did the pruning)."""
    return replace(policy, schemes=tuple(s for s in policy.schemes if SCHEMES[s].sparsity == 0))


def zero_keeping_recipe(scheme: SchemeName, group_size: int) -> list[Any]:
    """The scheme's recipe with every GPTQ step replaced by round-to-nearest of the same format."""
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    recipe = []
    for modifier in build_recipe(scheme, group_size):
        if isinstance(modifier, GPTQModifier):
            fields = {k: getattr(modifier, k) for k in ("targets", "scheme", "config_groups", "ignore")}
            modifier = QuantizationModifier(**{k: v for k, v in fields.items() if v is not None})
        recipe.append(modifier)
    return recipe


def choose_quantization(
    policy: LlmPolicy,
    *,
    baseline: perplexity.Perplexity,
    fine_tuned: perplexity.Perplexity,
    spent_budget_drop: float,
    keep_zeros: bool,
    build: Callable[[SchemeName, list[Any] | None], CandidateOutcome],
    group_size: int,
) -> QuantizationChoice:
    """Search the policy's candidates on the fine-tuned model (``build`` runs one)."""
    spent = perplexity.relative_increase(baseline, fine_tuned).value
    if spent <= policy.max_perplexity_increase:
        reference, budget = baseline, policy.max_perplexity_increase
        why = f"against the input model's perplexity, budget +{budget:.1%} (fine-tuning spent {spent:+.2%})"
    else:
        reference, budget = fine_tuned, spent_budget_drop
        why = (
            f"fine-tuning spent the level's +{policy.max_perplexity_increase:.1%} ({spent:+.2%}), so "
            f"quantization may add at most +{budget:.1%} over the fine-tuned model (max_int8_accuracy_drop)"
        )
    judged_policy = replace(policy, max_perplexity_increase=budget)

    def run(scheme: SchemeName) -> CandidateOutcome:
        return build(scheme, zero_keeping_recipe(scheme, group_size) if keep_zeros else None)

    result = search(judged_policy, reference, run, lambda outcome: outcome.perplexity)
    if result.chosen is None:
        tried = ", ".join(f"{j.scheme.value} {j.increase.value:+.1%}" for j in result.judged)
        reason = (
            f"no quantized candidate within budget ({tried}), {why}: the fine-tuned model ships unquantized"
        )
    else:
        reason = f"{result.reason(judged_policy)}, {why}"
    if keep_zeros:
        reason += "; weights rounded to nearest so that pruned weights stay zero"
    return QuantizationChoice(result, reference, budget, reason)


def candidate_builder(
    *,
    folder: Path,
    tokenizer: Any,
    group_size: int,
    calibration: Any,
    held_out: Any,
    out_root: Path,
    on_start: Callable[[SchemeName], None] = lambda scheme: None,
) -> Callable[[SchemeName, list[Any] | None], CandidateOutcome]:
    """``build(scheme, recipe)``: one candidate from the fine-tuned ``folder``."""

    def build(scheme: SchemeName, recipe: list[Any] | None) -> CandidateOutcome:
        on_start(scheme)
        return run_candidate(
            scheme,
            dense_folder=folder,
            tokenizer=tokenizer,
            group_size=group_size,
            calibration=calibration,
            held_out=held_out,
            out_dir=out_root / scheme.value,
            recipe=recipe,
        )

    return build
