"""The text-generation policy without a model: the level table, the search spaces, group sizes,
the search order and the perplexity statistics."""

from __future__ import annotations

import math

import pytest
from sparsify_runner.llm.choose import search
from sparsify_runner.llm.levels import PERPLEXITY_BUDGET_POINTS, level_table, llm_policy, perplexity_budget
from sparsify_runner.llm.perplexity import from_losses, relative_increase
from sparsify_runner.llm.schemes import SchemeName, build_recipe, choose_group_size
from sparsify_runner.spec import Objective

LEVELS = [i / 20 for i in range(21)]


def test_budget_is_monotone_and_matches_the_documented_points():
    budgets = [perplexity_budget(level) for level in LEVELS]
    assert budgets == sorted(budgets) and budgets[0] == 0.0
    assert all(b2 > b1 for b1, b2 in zip(budgets[1:], budgets[2:], strict=False))  # strictly above 0
    for level, budget in PERPLEXITY_BUDGET_POINTS:
        assert perplexity_budget(level) == pytest.approx(budget)
    assert perplexity_budget(0.2) == pytest.approx(0.02) and perplexity_budget(0.5) == pytest.approx(0.05)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("objective", list(Objective))
def test_a_higher_level_never_searches_less(device, objective):
    spaces = [set(llm_policy(level, objective=objective, device=device).schemes) for level in LEVELS]
    assert spaces[0] == set()
    assert all(a <= b for a, b in zip(spaces, spaces[1:], strict=False))


def test_candidates_per_target_most_compressed_first():
    assert llm_policy(0.5, device="cuda").schemes == (SchemeName.W4A16, SchemeName.W8A8)
    assert llm_policy(0.5, device="cpu").schemes == (SchemeName.W4A16, SchemeName.W8A16)
    assert llm_policy(0.2, device="cuda").schemes == (SchemeName.W8A8,)  # 8-bit only below 0.3
    size = llm_policy(0.5, device="cuda", objective=Objective.size).schemes
    assert size[0] is SchemeName.SPARSE50_W4A16 and SchemeName.W8A8 in size
    assert all(SchemeName.SPARSE50_W4A16 not in row["cuda/speed"] for row in level_table())


def test_max_drop_overrides_and_schemes_filter():
    policy = llm_policy(0.5, max_increase=0.2, only=(SchemeName.W8A16,))
    assert policy.max_perplexity_increase == 0.2 and policy.budget_source == "--max-accuracy-drop"
    assert policy.schemes == (SchemeName.W8A16,)


def test_group_size_divides_every_width():
    smol = choose_group_size([576, 576, 1536])  # SmolLM2-135M: hidden 576, MLP 1536
    assert smol.size == 64 and "576" in smol.note and "128" in smol.note
    assert choose_group_size([4096, 11008]).size == 128 and choose_group_size([4096]).note is None
    assert choose_group_size([96, 160]).size == 32
    with pytest.raises(ValueError, match="no group size"):
        choose_group_size([100])


def test_recipes_are_llmcompressor_modifiers():
    from llmcompressor.modifiers.gptq import GPTQModifier

    w4 = build_recipe(SchemeName.W4A16, 64)
    assert isinstance(w4[0], GPTQModifier)
    assert w4[0].config_groups["group_0"].weights.group_size == 64
    assert [type(m).__name__ for m in build_recipe(SchemeName.W8A8, 64)] == [
        "SmoothQuantModifier",
        "GPTQModifier",
    ]
    assert build_recipe(SchemeName.W8A16, 64)[0].config_groups["group_0"].weights.strategy == "channel"
    sparse = build_recipe(SchemeName.SPARSE50_W4A16, 32)
    assert [type(m).__name__ for m in sparse] == ["SparseGPTModifier", "QuantizationModifier"]


def test_perplexity_statistics():
    base = from_losses([2.0, 2.2, 1.8, 2.1], tokens=100)
    assert base.value == pytest.approx(math.exp(2.025))
    assert base.low < base.value < base.high
    worse = from_losses([2.1, 2.3, 1.9, 2.2], tokens=100)  # +0.1 nats on every window
    inc = relative_increase(base, worse)
    assert inc.value == pytest.approx(math.exp(0.1) - 1)
    assert inc.low == pytest.approx(inc.value) and inc.high == pytest.approx(inc.value)  # paired: no spread
    noisy = from_losses([2.3, 2.2, 1.8, 2.2], tokens=100)
    spread = relative_increase(base, noisy)
    assert spread.low < spread.value < spread.high


def _fake_search(increases: dict[SchemeName, float], level: float = 0.5):
    policy = llm_policy(level, device="cuda")
    base = from_losses([2.0, 2.0, 2.0], tokens=30)
    built: list[SchemeName] = []

    def run(scheme):
        built.append(scheme)
        return from_losses([2.0 + math.log1p(increases[scheme])] * 3, tokens=30)

    return search(policy, base, run, lambda p: p), built, policy


def test_search_ships_the_most_compressed_within_budget_and_skips_the_rest():
    result, built, policy = _fake_search({SchemeName.W4A16: 0.04, SchemeName.W8A8: 0.01})
    assert result.chosen.scheme is SchemeName.W4A16 and built == [SchemeName.W4A16]
    assert result.skipped == [SchemeName.W8A8] and "w4a16" in result.reason(policy)
    result, built, _ = _fake_search({SchemeName.W4A16: 0.2, SchemeName.W8A8: 0.01})
    assert result.chosen.scheme is SchemeName.W8A8 and built == [SchemeName.W4A16, SchemeName.W8A8]
    result, _, policy = _fake_search({SchemeName.W4A16: 0.2, SchemeName.W8A8: 0.06})
    assert result.chosen is None and "unchanged" in result.reason(policy)
