"""Optim-level sweeps: one experiment, a grid of (optim level, structure) points.

The models and the objective here are shared: ``sparsifyctl sweep`` runs the grid on this
machine (``run_local_sweep``), and the operator's ``SparsifySweep`` reconciler aggregates
its child experiments with the same ``SweepPoint``/``SweepResult`` shapes and the same
``choose_best``/``pareto_names``. Torch-free at import (the operator image has no torch):
the runner's heavy code is imported only inside a point's run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .errors import EXIT_INTERNAL, InputError, SparsifyError
from .pareto import pareto_front

log = logging.getLogger("sparsify.sweep")

STRUCTURES = ("unstructured", "channels")
STRUCTURE_SHORT = {"unstructured": "u", "channels": "c"}
MAX_LEVELS = 20
SWEEP_FILE = "sweep.json"
PointPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
SweepPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class SweepObjective(_Model):
    """How the best point is chosen: the fastest (or smallest) point within an accuracy budget."""

    maximize: Literal["speedup", "compression"] = Field(
        "speedup", description="speedup: lowest latency; compression: smallest model file."
    )
    max_accuracy_drop: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Largest allowed absolute accuracy drop vs the baseline (0.01 = 1 point). Without "
        "labels the top-1 disagreement with the baseline (1 - fidelity) is held to the same budget.",
    )
    min_fidelity: float | None = Field(
        None, ge=0.0, le=1.0, description="Also require at least this fidelity to the baseline."
    )


class SweepPoint(_Model):
    """One point of the grid: the child experiment (or local sub-folder) and its headline results."""

    name: str = Field(description="Child experiment name (local: the output sub-folder).")
    optim_level: float
    structure: Literal["unstructured", "channels"]
    phase: PointPhase = "Pending"
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    fidelity: float | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    size_bytes: int | None = None
    model_uri: str | None = None
    report_uri: str | None = None
    message: str | None = Field(None, description="Why the point failed (one line).")
    reused: bool | None = Field(None, description="Local sweeps: the finished result was reused, not re-run.")

    def with_results(self, results: Mapping[str, Any] | None) -> SweepPoint:
        """Fill the headline numbers from a run summary / experiment ``status.results`` (camelCase)."""
        if not results:
            return self
        r = dict(results)
        return self.model_copy(
            update={
                "accuracy": r.get("optimizedAccuracy"),
                "baseline_accuracy": r.get("baselineAccuracy"),
                "fidelity": r.get("fidelity"),
                "latency_ms": r.get("optimizedLatencyMs"),
                "speedup": r.get("speedup"),
                "size_bytes": r.get("optimizedSizeBytes"),
                "model_uri": r.get("modelUri"),
                "report_uri": r.get("reportUri"),
            }
        )


class SweepBest(_Model):
    name: str | None = None
    reason: str


class SweepPareto(_Model):
    """Names of the points on the Pareto fronts (quality = accuracy, else fidelity)."""

    latency: list[str] = Field(default_factory=list)
    size: list[str] = Field(default_factory=list)


class SweepResult(_Model):
    """sweep.json locally; the same fields make the SparsifySweep status."""

    phase: SweepPhase
    summary: str
    objective: SweepObjective = Field(default_factory=SweepObjective)
    points: list[SweepPoint] = Field(default_factory=list)
    best: SweepBest | None = None
    pareto: SweepPareto = Field(default_factory=SweepPareto)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---- grid -------------------------------------------------------------------------------------------


def level_token(level: float) -> str:
    """0.2 -> '020' (hundredths, three digits)."""
    return f"{round(level * 100):03d}"


def point_name(prefix: str, level: float, structure: str) -> str:
    """``<prefix>-020-u``: DNS-safe, stable, at most 63 characters (a long prefix is cut and
    suffixed with a hash of itself so two long sweeps never share children)."""
    suffix = f"-{level_token(level)}-{STRUCTURE_SHORT[structure]}"
    if len(prefix) + len(suffix) > 63:
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:6]
        prefix = prefix[: 63 - len(suffix) - 7].rstrip("-") + f"-{digest}"
    return prefix + suffix


def parse_levels(text: str | Iterable[float], flag: str = "--optim-levels") -> list[float]:
    """'0.2,0.5,0.8' -> [0.2, 0.5, 0.8]; one line naming the flag for anything else."""
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    items = [s for s in items if s != ""]
    if not items:
        raise InputError(f"{flag} is empty; pass optim levels between 0 and 1, e.g. {flag} 0.2,0.5,0.8")
    levels: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise InputError(f"{flag}: '{item}' is not a number; pass levels like 0.2,0.5,0.8") from None
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{flag}: {value:g} is out of range; optim levels go from 0 to 1")
        levels.append(value)
    if len(levels) > MAX_LEVELS:
        raise InputError(f"{flag}: {len(levels)} levels given; a sweep takes at most {MAX_LEVELS}")
    tokens = [level_token(v) for v in levels]
    dup = next((t for t in tokens if tokens.count(t) > 1), None)
    if dup is not None:
        raise InputError(
            f"{flag}: two levels round to the same point {int(dup) / 100:.2f}; use distinct levels "
            "at least 0.01 apart"
        )
    return levels


def parse_structures(text: str | Iterable[str], flag: str = "--structures") -> list[str]:
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else [s.strip() for s in text]
    items = [s for s in items if s]
    if not items:
        raise InputError(f"{flag} is empty; pass unstructured, channels or both (comma-separated)")
    for item in items:
        if item not in STRUCTURES:
            raise InputError(f"{flag}: unknown structure '{item}'; use unstructured or channels")
    return list(dict.fromkeys(items))


def grid(prefix: str, levels: Sequence[float], structures: Sequence[str]) -> list[SweepPoint]:
    """The points in a stable order (structure, then level)."""
    return [
        SweepPoint(name=point_name(prefix, level, s), optim_level=level, structure=s)
        for s in structures
        for level in levels
    ]


# ---- objective, fronts, aggregate phase ------------------------------------------------------------


def _quality(p: SweepPoint) -> float | None:
    return p.accuracy if p.accuracy is not None else p.fidelity


def within_budget(p: SweepPoint, objective: SweepObjective) -> tuple[bool, str]:
    """Whether a succeeded point meets the accuracy budget, and if not, why."""
    if p.accuracy is not None and p.baseline_accuracy is not None:
        drop = p.baseline_accuracy - p.accuracy
        if drop > objective.max_accuracy_drop + 1e-12:
            return False, f"accuracy drop {drop:.4f} > {objective.max_accuracy_drop:g}"
    elif p.fidelity is not None:
        if 1.0 - p.fidelity > objective.max_accuracy_drop + 1e-12:
            return False, f"fidelity {p.fidelity:.4f} < {1 - objective.max_accuracy_drop:g}"
    else:
        return False, "no accuracy or fidelity measured"
    if objective.min_fidelity is not None and (p.fidelity is None or p.fidelity < objective.min_fidelity):
        return False, f"fidelity below {objective.min_fidelity:g}"
    return True, ""


def choose_best(points: Sequence[SweepPoint], objective: SweepObjective) -> SweepBest | None:
    """The succeeded point within the budget with the highest speedup (or smallest size);
    ties go to the more accurate, then the lower optim level. None while nothing succeeded."""
    done = [p for p in points if p.phase == "Succeeded"]
    if not done:
        return None
    ok = [p for p in done if within_budget(p, objective)[0]]
    budget = f"accuracy drop <= {objective.max_accuracy_drop:g}" + (
        f", fidelity >= {objective.min_fidelity:g}" if objective.min_fidelity is not None else ""
    )
    if not ok:
        return SweepBest(name=None, reason=f"no succeeded point meets the budget ({budget})")
    if objective.maximize == "speedup":
        scored = [p for p in ok if p.speedup is not None]
        key: Callable[[SweepPoint], tuple] = lambda p: (p.speedup, _quality(p) or 0.0, -p.optim_level)  # noqa: E731
        what = lambda p: f"speedup {p.speedup:.2f}x"  # noqa: E731
    else:
        scored = [p for p in ok if p.size_bytes]
        key = lambda p: (-p.size_bytes, _quality(p) or 0.0, -p.optim_level)  # noqa: E731
        what = lambda p: f"size {p.size_bytes:,} bytes"  # noqa: E731
    if not scored:
        return SweepBest(name=None, reason=f"no point within the budget has a measured {objective.maximize}")
    best = max(scored, key=key)
    quality = _quality(best)
    metric = "accuracy" if best.accuracy is not None else "fidelity"
    q = "" if quality is None else f", {metric} {quality:.4f}"
    return SweepBest(name=best.name, reason=f"highest {objective.maximize} within {budget}: {what(best)}{q}")


def pareto_names(points: Sequence[SweepPoint]) -> SweepPareto:
    """Pareto fronts of the succeeded points: quality vs latency, quality vs size."""
    done = [p for p in points if p.phase == "Succeeded"]
    return SweepPareto(
        latency=[p.name for p in pareto_front(done, cost=lambda p: p.latency_ms, quality=_quality)],
        size=[p.name for p in pareto_front(done, cost=lambda p: p.size_bytes, quality=_quality)],
    )


def aggregate(points: Sequence[SweepPoint], objective: SweepObjective) -> SweepResult:
    """Sweep phase: Succeeded when every point finished and at least one succeeded; Failed
    only when all failed; Running while any point is running; else Pending."""
    phases = [p.phase for p in points]
    succeeded = phases.count("Succeeded")
    failed = phases.count("Failed")
    finished = succeeded + failed
    if points and finished == len(points):
        phase: SweepPhase = "Succeeded" if succeeded else "Failed"
    elif any(ph == "Running" for ph in phases) or finished:
        phase = "Running"
    else:
        phase = "Pending"
    summary = f"{succeeded}/{len(points)} succeeded"
    if failed:
        summary += f", {failed} failed ({', '.join(p.name for p in points if p.phase == 'Failed')})"
    if finished < len(points):
        summary += f", {len(points) - finished} to go"
    return SweepResult(
        phase=phase,
        summary=summary,
        objective=objective,
        points=list(points),
        best=choose_best(points, objective),
        pareto=pareto_names(points),
    )


# ---- local sweep ------------------------------------------------------------------------------------


def _point_experiment(base: Any, point: SweepPoint, output: str) -> Any:
    out = output.rstrip("/") + "/" + point.name
    name = f"{base.name}-{point.name}" if base.name else point.name
    return base.model_copy(
        update={"optim_level": point.optim_level, "structure": point.structure, "output": out, "name": name}
    )


def run_point(exp_wire: dict[str, Any], point_wire: dict[str, Any], show_progress: bool) -> dict[str, Any]:
    """Run (or reuse) one point; never raises: a failure becomes a Failed point.

    Top-level and wire-in/wire-out so a spawned worker process can run it. A finished
    result at the point's output with the same experiment fingerprint is always reused
    (the sweep is resumable whatever ``SPARSIFY_REUSE_RESULT`` says).
    """
    from . import storage
    from .run import _existing_result, experiment_fingerprint, run_experiment
    from .spec import Experiment

    point = SweepPoint.model_validate(point_wire)
    try:
        exp = Experiment.model_validate(exp_wire)
        output = storage.OutputLocation(exp.output)
        output.check()
        report = _existing_result(output, experiment_fingerprint(exp))
        reused = report is not None
        if report is None:
            report = run_experiment(exp, show_progress=show_progress)
        summary = report.summary().model_dump(mode="json", by_alias=True)
        done = point.with_results(summary).model_copy(update={"phase": "Succeeded", "reused": reused})
    except SparsifyError as err:
        done = point.model_copy(update={"phase": "Failed", "message": f"exit {err.exit_code}: {err}"})
    except Exception as err:  # a crash in one point must not take the sweep down
        log.exception("point %s crashed", point.name)
        done = point.model_copy(
            update={"phase": "Failed", "message": f"exit {EXIT_INTERNAL}: {type(err).__name__}: {err}"}
        )
    return done.model_dump(mode="json", by_alias=True)


def run_local_sweep(
    base: Any,
    levels: Sequence[float],
    structures: Sequence[str],
    output: str,
    parallel: int = 1,
    objective: SweepObjective | None = None,
    show_progress: bool = True,
    on_point: Callable[[SweepPoint], None] | None = None,
) -> SweepResult:
    """Run every point of the grid (``<output>/<point>/``), then write ``<output>/sweep.json``.

    ``base`` is the runner ``Experiment``; its optim level, structure, output and name are
    replaced per point. ``parallel`` > 1 runs points in that many spawned processes.
    """
    from .spec import uri_scheme
    from .storage import local_path

    objective = objective or SweepObjective()
    levels = parse_levels(levels)
    structures = parse_structures(structures)
    if parallel < 1:
        raise InputError(f"--parallel must be at least 1, got {parallel}")
    if uri_scheme(output) != "file":
        raise InputError(f"sweep output '{output}' must be a local folder (sweep.json is written there)")
    # absolute, so the report URIs in sweep.json resolve from any working directory
    output = str(local_path(output).resolve())
    points = grid("optim", levels, structures)
    jobs = [(_point_experiment(base, p, output).to_wire(), p.model_dump(mode="json")) for p in points]
    results: dict[str, SweepPoint] = {}

    def done(wire: dict[str, Any]) -> None:
        p = SweepPoint.model_validate(wire)
        results[p.name] = p
        if on_point:
            on_point(p)

    if parallel == 1 or len(jobs) == 1:
        for exp_wire, point_wire in jobs:
            done(run_point(exp_wire, point_wire, show_progress))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=ctx) as pool:
            futures = {pool.submit(run_point, e, p, False): p for e, p in jobs}
            for fut in as_completed(futures):
                try:
                    done(fut.result())
                except Exception as err:  # the worker process itself died
                    p = SweepPoint.model_validate(futures[fut])
                    done(
                        p.model_copy(
                            update={"phase": "Failed", "message": f"worker process failed: {err}"}
                        ).model_dump(mode="json")
                    )
    result = aggregate([results[p.name] for p in points], objective)
    folder = local_path(output)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / SWEEP_FILE, json.dumps(result.to_wire(), indent=2))
    return result


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_table(result: SweepResult, title: str = "sweep") -> Any:
    """A rich table of the points, marking the best and the Pareto fronts."""
    from rich import box
    from rich.table import Table

    from .summary import format_size

    def num(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    table = Table(title=f"{title} · {result.summary}", title_justify="left", box=box.SIMPLE_HEAD)
    for col, justify in (
        ("point", "left"),
        ("level", "right"),
        ("structure", "left"),
        ("phase", "left"),
        ("accuracy", "right"),
        ("fidelity", "right"),
        ("latency", "right"),
        ("speedup", "right"),
        ("size", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)
    best = result.best.name if result.best else None
    for p in result.points:
        marks = []
        if p.name == best:
            marks.append("best")
        if p.name in result.pareto.latency:
            marks.append("pareto-latency")
        if p.name in result.pareto.size:
            marks.append("pareto-size")
        if p.reused:
            marks.append("reused")
        table.add_row(
            p.name,
            f"{p.optim_level:.2f}",
            p.structure,
            p.phase,
            num(p.accuracy, ".2%"),
            num(p.fidelity, ".4f"),
            "-" if p.latency_ms is None else f"{p.latency_ms:.3f} ms",
            "-" if p.speedup is None else f"{p.speedup:.2f}x",
            format_size(p.size_bytes),
            ", ".join(marks),
        )
    return table
