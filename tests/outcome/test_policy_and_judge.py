"""The optim level as an outcome (budget + search space, monotone), the judge's units, and the
robust speed comparison: pure functions, in process."""

from __future__ import annotations

import numpy as np
import pytest
from sparsify_runner.outcome.judge import Judge, softmax
from sparsify_runner.recipes.levels import accuracy_budget, level_table, outcome_policy
from sparsify_runner.report import LatencyStats, compare_speed
from sparsify_runner.spec import Objective

LEVELS = [round(x, 2) for x in np.linspace(0, 1, 21)]


@pytest.mark.parametrize("objective", [Objective.speed, Objective.size])
def test_a_higher_level_never_has_a_smaller_budget_or_a_smaller_search_space(objective):
    policies = [outcome_policy(level, objective=objective) for level in LEVELS]
    for low, high in zip(policies, policies[1:], strict=False):
        assert high.max_accuracy_drop >= low.max_accuracy_drop
        assert set(low.macs_reductions) <= set(high.macs_reductions)
        assert set(low.sparsities) <= set(high.sparsities)
        assert high.int8 >= low.int8


def test_the_originals_promises_hold():
    base = outcome_policy(0.0)
    assert base.max_accuracy_drop == 0 and not base.searches  # 0 = the baseline unchanged
    for level in (0.05, 0.1, 0.2, 0.29):  # below 0.3: no pruning, INT8 only
        p = outcome_policy(level, objective=Objective.size)
        assert p.int8 and p.macs_reductions == () and p.sparsities == ()
    assert accuracy_budget(0.5) == pytest.approx(0.01) and accuracy_budget(0.2) == pytest.approx(0.005)
    # speed on onnxruntime: channels, never unstructured; size: unstructured, no channels
    speed, size = outcome_policy(0.5), outcome_policy(0.5, objective=Objective.size)
    assert speed.macs_reductions == (0.1, 0.2, 0.3, 0.4) and speed.sparsities == ()
    assert size.sparsities == (0.3, 0.4, 0.5) and size.macs_reductions == ()
    assert [r["optim_level"] for r in level_table()] == [0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0]


def test_max_accuracy_drop_overrides_the_levels_budget_and_says_so():
    p = outcome_policy(0.2, max_accuracy_drop=0.03)
    assert p.max_accuracy_drop == 0.03 and p.budget_source == "--max-accuracy-drop"
    assert "3 point(s)" in p.describe()


def test_unlabelled_cost_charges_a_flip_by_the_baselines_confidence():
    """A flip between two near-tied classes costs almost nothing; a flip away from a confident
    prediction costs its confidence (top-1 agreement would charge both a full point)."""
    base = [np.array([0.0, 0.01, -5.0]), np.array([5.0, 0.0, 0.0])]
    near_tie_flip = [np.array([0.02, 0.0, -5.0]), np.array([5.0, 0.0, 0.0])]
    confident_flip = [np.array([0.0, 0.01, -5.0]), np.array([0.0, 5.0, 0.0])]
    judge = Judge(base, budget=0.01)
    assert judge.metric == "estimated accuracy"
    cheap, costly = judge.assess(near_tie_flip), judge.assess(confident_flip)
    assert 0 < cheap.drop < 0.01 and cheap.within_budget
    assert costly.drop > 0.45 and not costly.within_budget
    assert judge.assess(base).drop == 0.0


def test_labelled_accuracy_drop_is_paired_with_an_interval():
    rng = np.random.default_rng(0)
    labels = list(rng.integers(0, 2, 400))
    base = [np.eye(2)[y] for y in labels]  # always right
    cand = [np.eye(2)[1 - y] if i % 50 == 0 else np.eye(2)[y] for i, y in enumerate(labels)]  # 2% wrong
    a = Judge(base, budget=0.01, labels=labels).assess(cand)
    assert a.metric == "accuracy" and a.drop == pytest.approx(0.02) and not a.within_budget
    assert a.low < 0.02 < a.high and a.samples == 400
    f1 = Judge(base, budget=0.05, labels=labels, metric="f1").assess(cand)
    assert f1.metric == "f1" and 0 < f1.drop <= 0.03 and f1.within_budget and f1.low <= f1.drop <= f1.high


def test_softmax_keeps_probabilities_and_normalizes_logits():
    probs = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert np.allclose(softmax(probs), probs)
    assert np.allclose(softmax(np.array([[0.0, 0.0]])), [[0.5, 0.5]])


def _lat(samples):
    return LatencyStats(
        provider="cpu", batch_size=1, iterations=len(samples), mean_ms=float(np.mean(samples)),
        median_ms=float(np.median(samples)), p90_ms=float(np.percentile(samples, 90)), std_ms=0.0,
        throughput_items_per_s=1.0, samples_ms=list(samples),
    )  # fmt: skip


def test_speed_verdicts_need_a_difference_the_noise_cannot_explain():
    rng = np.random.default_rng(1)
    base = _lat(10 + rng.normal(0, 1, 200))
    same = _lat(10 + rng.normal(0, 1, 200))
    fast = _lat(5 + rng.normal(0, 0.5, 200))
    assert compare_speed(base, base, identical=True).verdict == "identical model"
    assert compare_speed(base, base, identical=True).ratio == 1.0
    assert compare_speed(base, same).verdict == "same within noise"
    verdict = compare_speed(base, fast)
    assert verdict.verdict == "faster" and verdict.words().endswith("x faster")
    slow = compare_speed(fast, base)
    assert slow.verdict == "slower" and slow.words() == f"{1 / slow.ratio:.2f}x slower"


def test_finalists_tied_within_timing_noise_are_ordered_by_drop_size_then_name():
    from pathlib import Path

    from sparsify_runner.outcome.judge import Assessment
    from sparsify_runner.outcome.search import Measured, order_finalists
    from sparsify_runner.report import SpeedComparison

    def m(name, ratio, low, high, drop):
        tune = Assessment("accuracy", 0.8, 0.8 - drop, drop, drop, drop, 500, True)
        speed = SpeedComparison(ratio=ratio, low=low, high=high, verdict="faster")
        return Measured(name, Path(name), "int8", tune, speedup=ratio, speed=speed)

    u8 = m("int8-u8s8", 2.01, 1.95, 2.07, 0.004)
    s8 = m("int8-s8s8", 2.03, 1.96, 2.08, 0.004)
    safer = m("int8-gptq", 1.99, 1.94, 2.05, 0.0)
    slow = m("channels", 1.5, 1.45, 1.55, 0.0)
    for order in ([u8, s8, safer, slow], [slow, s8, u8, safer]):
        assert [x.name for x in order_finalists(Objective.speed, order)] == [
            "int8-gptq", "int8-s8s8", "int8-u8s8", "channels",
        ]  # fmt: skip


def test_int8_pick_breaks_a_speed_tie_by_faithfulness_then_name():
    from pathlib import Path
    from types import SimpleNamespace

    from sparsify_runner.modifiers.int8.acceptance import pick
    from sparsify_runner.modifiers.int8.candidates import Candidate
    from sparsify_runner.report import Fidelity

    def cand(name, speedup, score):
        fid = Fidelity(samples=100, top1_agreement=score, cosine_similarity=score)
        return Candidate(name, Path(name), {}, [], fid, score, speedup, 1.0)

    for order in ([0, 1, 2], [2, 1, 0]):
        done = [cand("int8-u8s8", 2.01, 0.99), cand("int8-s8s8", 2.03, 0.99), cand("int8-gptq", 1.2, 1.0)]
        chosen = pick(SimpleNamespace(done=[done[i] for i in order]), 0.9, 1.0)
        assert chosen.name == "int8-s8s8"  # u8s8 and s8s8 tie on speed and score: the name decides
    done = [cand("int8-u8s8", 2.01, 0.98), cand("int8-s8s8", 2.03, 0.97)]
    assert pick(SimpleNamespace(done=done), 0.9, 1.0).name == "int8-u8s8"  # tied: more faithful wins


def test_int8_pick_re_times_close_contenders_side_by_side_before_choosing():
    """The first timings (each beside FP32 at its own moment) put u8s8 ahead by 8%; timed again
    side by side they tie, so the tie rule (faithfulness, then name) decides."""
    from pathlib import Path

    from sparsify_runner.modifiers.int8.acceptance import pick
    from sparsify_runner.modifiers.int8.candidates import Candidate
    from sparsify_runner.report import Fidelity

    def cand(name, speedup, score=0.99):
        fid = Fidelity(samples=100, top1_agreement=score, cosine_similarity=score)
        return Candidate(name, Path(name), {}, [], fid, score, speedup, 1.0)

    class Builder:
        def __init__(self, done, side_by_side):
            self.done, self.side_by_side, self.retimed = done, side_by_side, []

        def retime(self, candidates):
            self.retimed = [c.name for c in candidates]
            for c in candidates:
                c.speedup, c.retimed = self.side_by_side[c.name], True

    far = cand("int8-gptq", 1.5)  # outside the re-timing band: its first timing stands
    side_by_side = {"int8-u8s8": 2.02, "int8-s8s8": 2.03}
    b = Builder([cand("int8-u8s8", 2.16), cand("int8-s8s8", 2.0), far], side_by_side)
    assert pick(b, 0.9, 1.0).name == "int8-s8s8"
    assert sorted(b.retimed) == ["int8-s8s8", "int8-u8s8"] and not far.retimed
    lone = Builder([cand("int8-u8s8", 2.1), far], {})
    assert pick(lone, 0.9, 1.0).name == "int8-u8s8" and lone.retimed == []  # nothing close: no re-timing
    side_by_side = {"int8-u8s8": 0.97, "int8-s8s8": 0.96}
    slower = Builder([cand("int8-u8s8", 1.05), cand("int8-s8s8", 1.0)], side_by_side)
    assert pick(slower, 0.9, 1.0) is None  # re-timed below FP32: none is fast enough


def test_the_profile_skips_channel_amounts_that_cannot_be_measurably_faster(monkeypatch):
    from types import SimpleNamespace

    from sparsify_runner.outcome import search

    assert search.best_case_speedup(1.0, 0.5) == pytest.approx(2.0)
    assert search.best_case_speedup(0.1, 0.1) == pytest.approx(1 / 0.99)
    inp = SimpleNamespace(policy=outcome_policy(0.8))
    monkeypatch.setattr(search, "kernel_time_share", lambda _inp: 0.15)  # a tiny model: overhead rules
    notes: list[str] = []
    kept = search._channel_amounts(inp, notes)
    assert kept == tuple(a for a in inp.policy.macs_reductions if a >= 0.2)  # 15% x 10% = 1.5% < 2%
    assert len(notes) == 1 and "10%" in notes[0] and "cannot be measurably faster" in notes[0]
    monkeypatch.setattr(search, "kernel_time_share", lambda _inp: 0.9)
    assert search._channel_amounts(inp, []) == inp.policy.macs_reductions
    monkeypatch.setattr(search, "kernel_time_share", lambda _inp: 0.15)
    size = SimpleNamespace(policy=outcome_policy(0.8, objective=Objective.size, structure="channels"))
    assert 0.1 in size.policy.macs_reductions
    assert search._channel_amounts(size, []) == size.policy.macs_reductions  # size: no speed bound


def test_int8_speed_tie_uses_the_side_by_side_interval_beyond_the_fixed_margin():
    from pathlib import Path

    from sparsify_runner.modifiers.int8.acceptance import speed_tie
    from sparsify_runner.modifiers.int8.candidates import Candidate
    from sparsify_runner.report import Fidelity

    rng = np.random.default_rng(0)

    def cand(name, speedup, median_ms, spread):
        fid = Fidelity(samples=100, top1_agreement=0.99, cosine_similarity=0.99)
        c = Candidate(name, Path(name), {}, [], fid, 0.99, speedup, median_ms)
        samples = list(median_ms * (1 + rng.normal(0, spread, 200)))
        c.latency = LatencyStats(
            provider="CPUExecutionProvider", batch_size=1, iterations=200, mean_ms=median_ms,
            median_ms=median_ms, p90_ms=median_ms, std_ms=0.0, throughput_items_per_s=1.0,
            samples_ms=samples,
        )  # fmt: skip
        return c

    fastest = cand("int8-u8s8-reduce-range", 1.77, 1.00, 0.5)
    noisy = cand("int8-u8s8", 1.64, 1.08, 0.5)  # 8% slower, but the spread cannot tell
    assert speed_tie(noisy, fastest)
    sharp_fast, sharp = cand("a", 1.77, 1.00, 0.01), cand("b", 1.64, 1.08, 0.01)
    assert not speed_tie(sharp, sharp_fast)  # 8% with a tight spread: measurably slower
    untimed = Candidate("c", Path("c"), {}, [], noisy.fidelity, 0.99, 1.64, 1.08)
    assert not speed_tie(untimed, fastest)  # no side-by-side timing: the fixed 5% margin only
