"""INT8 search, stage 4: when a candidate is faithful enough (a binomial allowance of top-1
flips on the held-out samples, or a cosine floor) and fast enough, and which one is picked."""

from __future__ import annotations

import math

from ...report import Fidelity
from .candidates import Candidate, CandidateBuilder


def allowed_flips(n: int, max_loss: float, alpha: float = 0.2) -> int:
    """Most top-1 disagreements out of ``n`` held-out samples still plausible for a model whose
    true loss is ``max_loss``: the largest k with P(X >= k) >= alpha, X ~ Binomial(n, max_loss).
    With a 1% budget: 0 of 8, 1 of 64, 3 of 200. Demanding zero flips on 64 samples would reject
    a model that really is 99% faithful about half the time (1 - 0.99**64 = 0.47)."""
    if max_loss <= 0.0 or n <= 0:
        return 0
    p = min(max_loss, 1.0)
    tail = 1.0  # P(X >= k), starting at k = 0
    for k in range(n + 1):
        if tail < alpha:
            return k - 1
        tail -= math.comb(n, k) * p**k * (1 - p) ** (n - k)
    return n


def within_budget(fid: Fidelity, min_score: float) -> bool:
    """Top-1 agreement: flips allowed by :func:`allowed_flips` over the samples; a detector's box
    agreement: the same allowance over the detections compared; other outputs: cosine >= min_score."""
    if fid.top1_agreement is not None:
        flips = round((1.0 - fid.top1_agreement) * fid.samples)
        return flips <= allowed_flips(fid.samples, 1.0 - min_score)
    if fid.box_agreement is not None and fid.box_count:
        misses = round((1.0 - fid.box_agreement) * fid.box_count)
        return misses <= allowed_flips(fid.box_count, 1.0 - min_score)
    return fid.cosine_similarity >= min_score


def candidate_within(c: Candidate, min_score: float) -> bool:
    """A candidate judged against the baseline (the outcome search's accuracy budget) passes by
    that judgement; otherwise by its fidelity to the model it quantizes."""
    if c.assessment is not None:
        return c.assessment.within_budget
    return within_budget(c.fidelity, min_score)


def passes(c: Candidate, min_score: float, min_speedup: float) -> bool:
    return candidate_within(c, min_score) and c.speedup >= min_speedup


SPEED_TIE = 0.05
"""Candidates within 5% of the fastest one's speedup are a tie (MiniLM: u8s8 2.01x and s8s8
2.03x swapped between two runs of the same input)."""

RETIME_BAND = 0.15
"""Candidates within budget whose first timings are within 15% of the fastest are timed again
side by side before the pick: each first timing was taken beside FP32 at its own moment, and
a shared machine's load drifts between them by more than the tie (MiniLM, 1.5 s each: u8s8 and
s8s8 traded places by 8% between runs)."""


def speed_tie(c: Candidate, fastest: Candidate) -> bool:
    """``c`` is as fast as ``fastest`` for the pick: within :data:`SPEED_TIE`, or (both re-timed
    side by side) the fastest is not measurably faster (bootstrap interval of the median ratio,
    ``report.compare_speed``). Measured on MobileNetV2-MNIST, INT8 of a pruned model: u8s8 and
    u8s8-reduce-range run the same kernels, yet their 3 s re-timings differed by 5-7% between
    runs, so a fixed margin alone still swapped them."""
    from ...report import compare_speed

    if c.speedup >= fastest.speedup * (1 - SPEED_TIE):
        return True
    if c.latency is None or fastest.latency is None:
        return False
    return compare_speed(c.latency, fastest.latency).verdict != "faster"


def pick(s: CandidateBuilder, min_score: float, min_speedup: float) -> Candidate | None:
    """The fastest passing candidate; among those tied with it on speed (:func:`speed_tie`), the
    most faithful (smallest drop against the baseline when judged, else highest score), then by
    name, so the same inputs give the same choice. Close contenders are re-timed side by side
    first (``CandidateBuilder.retime``)."""
    within = [c for c in s.done if candidate_within(c, min_score)]
    if not within:
        return None
    close = [c for c in within if c.speedup >= max(c.speedup for c in within) * (1 - RETIME_BAND)]
    if len(close) > 1 and hasattr(s, "retime"):
        s.retime(close)
    ok = [c for c in within if c.speedup >= min_speedup]
    if not ok:
        return None
    fastest = max(ok, key=lambda c: c.speedup)
    ties = [c for c in ok if speed_tie(c, fastest)]

    def faithful(c: Candidate) -> float:
        return -c.assessment.drop if c.assessment is not None else c.score

    return min(ties, key=lambda c: (-round(faithful(c), 9), c.name))
