"""Search, then choose: the one-shot candidates an optim level allows, measured on the
deployment target against the baseline, and the one shipped.

1. pruning candidates (channels at several MAC fractions; unstructured sparsities for the
   size objective), each from the baseline, smallest amount first; a family stops at the
   first amount over the budget (more pruning only costs more);
2. their latency against the baseline, alternating in one process (medians);
3. INT8 (the measured search of ``modifiers.int8``, judged against the *baseline*, not the
   model it quantizes) on the baseline and on the best pruned candidate;
4. finalists within budget on the tuning split: the best few by the objective are timed again
   beside the baseline (a bootstrap interval of the median ratio, ``report.compare_speed``)
   and checked on the acceptance split, which the search never saw;
5. the fastest finalist that is measurably faster (or, for ``size``, the smallest that is not
   measurably slower) and within budget on both splits is shipped; if none is, the baseline.
Every measured point is reported with its place on the Pareto front.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..recipes.levels import OutcomePolicy
from ..report import CandidateRecord, SpeedComparison
from ..spec import Objective
from .judge import Assessment, Judge

MIN_MACS_REMOVED = 0.01
"""A channel candidate that removes less than this share of the MACs is the baseline again."""


@dataclass
class Measured:
    """One model the search built and measured (the baseline included)."""

    name: str
    path: Path
    stage: str
    """baseline, pruning, int8 or pruning+int8."""
    tune: Assessment
    speedup: float = 1.0
    """Median latency ratio against the baseline (INT8 on a pruned model: the product of two
    ratios until the finalists are timed side by side)."""
    compressed_bytes: int = 0
    size_bytes: int = 0
    macs_fraction: float | None = None
    sparsity: float | None = None
    prune: Any = None
    """``modifiers.one_shot.PruneResult`` of a pruned candidate (and of INT8 on it)."""
    int8: Any = None
    """``modifiers.int8.QuantizationResult`` of an INT8 candidate."""
    source: Measured | None = None
    accept: Assessment | None = None
    speed: SpeedComparison | None = None


@dataclass
class SearchInputs:
    """What the search reads; the pathway validated all of it."""

    state: Any
    """``modifiers.one_shot.OneShotState``: baseline, build folder, calibration and tuning samples."""
    policy: OutcomePolicy
    tune: Judge
    accept: Judge
    accept_samples: list
    recipe: Any
    method: str
    quant_format: str
    deploy_batch: int = 1
    deploy_device: str = "cpu"


@dataclass
class SearchResult:
    chosen: Measured | None
    """None: no candidate beat the baseline within the budget; the baseline is shipped."""
    records: list[CandidateRecord]
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def _sizes(path: Path) -> tuple[int, int]:
    """File and gzip size (``modelstats.model_stats``: external data included)."""
    from ..modelstats import model_stats

    stats = model_stats(path)
    return stats.file_size_bytes, stats.compressed_size_bytes


def _prune(inp: SearchInputs, family: str, amount: float):
    from ..modifiers.one_shot import ChannelPruning, UnstructuredPruning
    from ..recipes.schema import ChannelPruningConfig, UnstructuredPruningConfig

    state = inp.state
    state.current = state.baseline
    if family == "channels":
        modifier = ChannelPruning(amount, config=inp.recipe.config(ChannelPruningConfig))
    else:
        modifier = UnstructuredPruning(
            amount, method=inp.method, config=inp.recipe.config(UnstructuredPruningConfig)
        )
    return modifier.finalize(state)


def kernel_time_share(inp: SearchInputs) -> float | None:
    """Share of the baseline's latency on the deployment target spent inside kernels, from
    ``predict.profile_model``'s per-node profile; the rest (session, copies) does not shrink
    when channels go. None when the profile cannot be taken."""
    from ..predict import profile_model
    from ..spec import DeployTarget

    deploy = DeployTarget(device=inp.deploy_device, batch_size=inp.deploy_batch)
    try:
        profile = profile_model(inp.state.baseline, deploy, runs=5, seconds=0.5)
    except Exception:  # the profile only prunes the search; without it every amount is tried
        return None
    return profile.node_ms / profile.latency_ms if profile.latency_ms > 0 else None


def best_case_speedup(kernel_share: float, macs_removed: float) -> float:
    """The most that removing ``macs_removed`` of the MACs can buy: every kernel's time shrinks
    in proportion (weight layers and the elementwise ops on their channels alike), the time
    outside kernels stays."""
    return 1.0 / (1.0 - kernel_share * macs_removed)


def _channel_amounts(inp: SearchInputs, notes: list[str]) -> tuple[float, ...]:
    """The policy's channel amounts, less those that cannot be measurably faster than the
    baseline even in the best case (speed objective only)."""
    from ..report import MIN_SPEED_CHANGE

    amounts = inp.policy.macs_reductions
    if not amounts or inp.policy.objective is not Objective.speed:
        return amounts
    share = kernel_time_share(inp)
    if share is None:
        return amounts
    kept = tuple(a for a in amounts if best_case_speedup(share, a) >= 1.0 + MIN_SPEED_CHANGE)
    if len(kept) < len(amounts):
        skipped = [a for a in amounts if a not in kept]
        notes.append(
            f"predict: kernels are {share:.0%} of the baseline's latency on the deployment target, so "
            f"removing {max(skipped):.0%} of the MACs can save at most "
            f"{1 - 1 / best_case_speedup(share, max(skipped)):.1%}; channel amounts "
            + ", ".join(f"{a:.0%}" for a in skipped)
            + " were not built (they cannot be measurably faster)"
        )
    return kept


def _pruning_candidates(inp: SearchInputs, deadline: float, notes: list[str]) -> list[Measured]:
    state, policy = inp.state, inp.policy
    found: list[Measured] = []
    families = (("channels", _channel_amounts(inp, notes)), ("unstructured", policy.sparsities))
    for family, amounts in families:
        for amount in amounts:
            if time.perf_counter() > deadline:
                notes.append(f"search time budget spent: {family} pruning beyond {amount:.0%} not tried")
                break
            result = _prune(inp, family, amount)
            notes.extend(n for n in result.notes if n not in notes)
            if result.rejected:
                notes.append(f"channel pruning at {amount:.0%} of MACs lost too much to be measured further")
                break
            kept = result.achieved_macs_fraction
            if family == "channels" and kept is not None and kept > 1.0 - MIN_MACS_REMOVED:
                notes.append(
                    f"channel pruning removed {1 - kept:.1%} of the MACs at the {amount:.0%} target: this "
                    "graph's channels are coupled (residual adds, attention heads), so channel candidates "
                    "were not measured further"
                )
                break
            path = state.current
            label = f"channels -{amount:.0%} MACs" if family == "channels" else f"unstructured {amount:.0%}"
            assessment = inp.tune.assess(state.holdout_outputs(path, label))
            size, gz = _sizes(path)
            found.append(
                Measured(
                    name=label,
                    path=path,
                    stage="pruning",
                    tune=assessment,
                    size_bytes=size,
                    compressed_bytes=gz,
                    macs_fraction=result.achieved_macs_fraction,
                    sparsity=result.achieved_sparsity,
                    prune=result,
                )
            )
            if not assessment.within_budget:
                notes.append(
                    f"{label}: {assessment.metric} drop {assessment.drop * 100:.2f} points is over the "
                    "budget "
                    f"({policy.max_accuracy_drop * 100:.2f}); larger {family} amounts were not tried"
                )
                break
    return found


def _time_against_baseline(inp: SearchInputs, models: list[Measured], seconds: float) -> None:
    """Median latency ratio of each model against the baseline, alternating in one process."""
    from ..benchmark import measure_latency
    from ..report import compare_speed

    if not models:
        return
    stats = measure_latency(
        [inp.state.baseline, *[m.path for m in models]],
        batch_size=inp.deploy_batch,
        device=inp.deploy_device,
        seconds=seconds,
        warmup=3,
        min_iterations=10,
    )
    for m, s in zip(models, stats[1:], strict=True):
        m.speed = compare_speed(stats[0], s)
        m.speedup = m.speed.ratio


def _int8_sources(objective: Objective, base: Measured, pruned: list[Measured]) -> list[Measured]:
    """INT8 is tried on the baseline and on the pruned candidate within budget that the
    objective favours (the fastest, or the smallest)."""
    ok = [m for m in pruned if m.tune.within_budget]
    if not ok:
        return [base]
    if objective is Objective.size:
        best = min(ok, key=lambda m: m.compressed_bytes)
    else:
        best = max(ok, key=lambda m: m.speedup)
    return [base, best]


def _int8_candidates(
    inp: SearchInputs, sources: list[Measured], deadline: float, notes: list[str], records: list
) -> list[Measured]:
    from ..modifiers.int8 import quantize_int8
    from ..recipes.schema import Int8SearchConfig

    cfg = inp.recipe.config(Int8SearchConfig)
    state = inp.state
    found: list[Measured] = []
    for i, src in enumerate(sources):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            notes.append(f"search time budget spent: INT8 of {src.name} not tried")
            continue
        budget_s = min(cfg.int8_search_seconds, remaining / (len(sources) - i))
        out = state.build / f"int8-{i}.onnx"
        q = quantize_int8(
            src.path,
            state.calibration,
            out,
            holdout=state.holdout,
            quant_format=inp.quant_format,
            show_progress=state.show_progress,
            bench_seconds=cfg.int8_candidate_seconds,
            time_budget_s=budget_s,
            equalize=cfg.int8_equalization,
            detector=state.detector,
            judge=inp.tune,
        )
        prefix = "" if src.stage == "baseline" else f"{src.name} + "
        for rec in q.candidates:
            if rec.name == "fp32":
                continue
            records.append(
                rec.model_copy(
                    update={
                        "name": prefix + rec.name,
                        "chosen": False,
                        "stage": "int8" if src.stage == "baseline" else "pruning+int8",
                        "speedup": None if rec.speedup is None else round(rec.speedup * src.speedup, 4),
                        "note": "; ".join(
                            x for x in (rec.note, None if not prefix else "speedup x the pruned model's") if x
                        )
                        or None,
                    }
                )
            )
        notes.extend(n for n in q.notes if not n.startswith("INT8 not applied"))
        if not q.quantized or q.assessment is None:
            continue
        size, gz = _sizes(q.path)
        found.append(
            Measured(
                name=prefix + q.chosen,
                path=q.path,
                stage="int8" if src.stage == "baseline" else "pruning+int8",
                tune=q.assessment,
                speedup=round((q.speedup or 1.0) * src.speedup, 4),
                size_bytes=size,
                compressed_bytes=gz,
                macs_fraction=src.macs_fraction,
                sparsity=src.sparsity,
                prune=src.prune,
                int8=q,
                source=src,
            )
        )
    return found


def _rank(objective: Objective, models: list[Measured]) -> list[Measured]:
    if objective is Objective.size:
        return sorted(models, key=lambda m: (m.compressed_bytes, -m.speedup))
    return sorted(models, key=lambda m: -m.speedup)


SIZE_SPEED_TOLERANCE = 0.05
"""The size objective ships a smaller model unless it is measurably slower by more than this:
unstructured zeros leave the graph and its kernels as they were, so its true speed is the
baseline's and a tighter gate would only reject it on timing noise."""


def _acceptable_speed(objective: Objective, speed: SpeedComparison) -> bool:
    """speed: measurably faster; size: not measurably slower (beyond the tolerance)."""
    if objective is Objective.speed:
        return speed.verdict == "faster"
    return not (speed.verdict == "slower" and speed.ratio < 1.0 - SIZE_SPEED_TOLERANCE)


def order_finalists(objective: Objective, finalists: list[Measured]) -> list[Measured]:
    """Finalists in the order they are tried, once timed side by side. For speed, those whose
    ratio interval reaches the fastest one's are a tie that timing cannot split: the smallest
    accuracy drop goes first, then the smallest file, then the name, so the same inputs give the
    same choice (measured on MiniLM at 0.2: u8s8 2.01x and s8s8 2.03x, same drop, swapped between
    two runs)."""
    ranked = _rank(objective, finalists)
    if objective is not Objective.speed or not ranked or ranked[0].speed is None:
        return ranked
    top = ranked[0].speed
    ties = [m for m in ranked if m.speed is not None and m.speed.high >= top.low]
    ties.sort(key=lambda m: (round(m.tune.drop, 9), m.compressed_bytes, m.name))
    return ties + [m for m in ranked if m not in ties]


def _choose(
    inp: SearchInputs, finalists: list[Measured], seconds: float, notes: list[str]
) -> Measured | None:
    from ..modifiers.one_shot import outputs_on

    _time_against_baseline(inp, finalists, seconds)
    for m in order_finalists(inp.policy.objective, finalists):
        if not _acceptable_speed(inp.policy.objective, m.speed):
            notes.append(f"{m.name}: not chosen, {m.speed.words()} beside the baseline")
            continue
        m.accept = inp.accept.assess(outputs_on(m.path, inp.accept_samples, inp.state.detector))
        if not m.accept.within_budget:
            notes.append(
                f"{m.name}: within budget on the tuning split but not on the acceptance split "
                f"({m.accept.metric} drop {m.accept.drop * 100:.2f} points); not chosen"
            )
            continue
        return m
    return None


def _pareto(records: list[CandidateRecord], objective: Objective) -> None:
    """Mark the records no other record beats on both accuracy drop and speed (or size)."""

    def cost(r: CandidateRecord) -> float | None:
        if objective is Objective.size:
            return None if r.compressed_size_bytes is None else float(r.compressed_size_bytes)
        return None if r.speedup is None else -r.speedup

    points = [(r, r.accuracy_drop, cost(r)) for r in records]
    for r, drop, c in points:
        if drop is None or c is None:
            continue
        r.pareto = not any(
            d2 is not None and c2 is not None and d2 <= drop and c2 <= c and (d2 < drop or c2 < c)
            for _, d2, c2 in points
        )


def _record(m: Measured, chosen: bool) -> CandidateRecord:
    return CandidateRecord(
        name=m.name,
        chosen=chosen,
        stage=m.stage,
        speedup=round(m.speedup, 4),
        fidelity=None,
        accuracy_drop=round(m.tune.drop, 6),
        accuracy_drop_interval=[round(m.tune.low, 6), round(m.tune.high, 6)],
        accept_drop=None if m.accept is None else round(m.accept.drop, 6),
        size_bytes=m.size_bytes or None,
        compressed_size_bytes=m.compressed_bytes or None,
        macs_fraction=m.macs_fraction,
        sparsity=m.sparsity,
        within_budget=m.tune.within_budget,
        note=None if m.speed is None else m.speed.words(),
    )


def search(inp: SearchInputs) -> SearchResult:
    """Measure the policy's candidates and choose one (see the module docstring)."""
    from ..recipes.schema import OutcomeSearchConfig

    cfg = inp.recipe.config(OutcomeSearchConfig)
    started = time.perf_counter()
    deadline = started + cfg.search_seconds
    notes: list[str] = []
    timings: dict[str, float] = {}
    state = inp.state
    base_size, base_gz = _sizes(state.baseline)
    base = Measured(
        name="fp32 baseline",
        path=state.baseline,
        stage="baseline",
        tune=inp.tune.assess(state.baseline_outputs),
        size_bytes=base_size,
        compressed_bytes=base_gz,
        macs_fraction=1.0,
    )
    state.stage("prune")
    pruned = _pruning_candidates(inp, deadline, notes)
    _time_against_baseline(inp, [m for m in pruned if m.tune.within_budget], cfg.candidate_seconds)
    timings["prune"] = round(time.perf_counter() - started, 3)
    state.stage("quantize")
    records: list[CandidateRecord] = []
    quantized: list[Measured] = []
    if inp.policy.int8:
        quantized = _int8_candidates(
            inp, _int8_sources(inp.policy.objective, base, pruned), deadline, notes, records
        )
    timings["quantize"] = round(time.perf_counter() - started - timings["prune"], 3)
    state.stage("choose")
    within = [m for m in [*pruned, *quantized] if m.tune.within_budget]
    finalists = _rank(inp.policy.objective, within)[: cfg.finalists]
    chosen = _choose(inp, finalists, cfg.candidate_seconds * 2, notes) if finalists else None
    timings["choose"] = round(time.perf_counter() - started - timings["prune"] - timings["quantize"], 3)
    measured = [base, *pruned, *quantized]
    kept = {m.name for m in quantized}  # the INT8 search's own rows of these are replaced by theirs
    records = [_record(m, m is chosen) for m in measured] + [r for r in records if r.name not in kept]
    _pareto(records, inp.policy.objective)
    if chosen is None:
        notes.append(
            "no candidate was both within the accuracy budget and "
            + ("measurably faster" if inp.policy.objective is Objective.speed else "not slower")
            + " than the baseline on the deployment target, so the baseline is returned unchanged"
        )
    return SearchResult(chosen, records, notes, timings)
