"""Operator metrics on ``/metrics`` (prometheus-client)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from .models import PHASES, Phase

EXPERIMENTS = Gauge("sparsify_operator_experiments", "SparsifyExperiments by phase", ["phase"])
RECONCILE = Histogram(
    "sparsify_operator_reconcile_duration_seconds",
    "Handler duration",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOB_FAILURES = Counter("sparsify_operator_job_failures_total", "Experiments that ended Failed", ["reason"])
JOBS_CREATED = Counter("sparsify_operator_jobs_created_total", "Jobs created for experiments")
HANDLER_ERRORS = Counter("sparsify_operator_handler_errors_total", "Handler exceptions", ["handler"])

_phases: dict[str, str] = {}


def track_phase(uid: str, phase: str | None, *, deleted: bool = False) -> None:
    if deleted:
        _phases.pop(uid, None)
    else:
        _phases[uid] = phase or Phase.PENDING
    counts = dict.fromkeys(PHASES, 0)
    for value in _phases.values():
        counts[value] = counts.get(value, 0) + 1
    for name, count in counts.items():
        EXPERIMENTS.labels(phase=name).set(count)


@contextmanager
def timed(handler: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except Exception:
        HANDLER_ERRORS.labels(handler=handler).inc()
        raise
    finally:
        RECONCILE.labels(handler=handler).observe(time.perf_counter() - start)
