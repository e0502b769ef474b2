"""Run telemetry: stage, progress and result metrics.

This base implementation logs; the Prometheus exporter (``/metrics`` while running, a
Pushgateway push at the end) plugs in behind the same methods, so pathways only ever
call ``ctx.telemetry.<method>``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report

log = logging.getLogger("sparsify.runner")


class Telemetry:
    """What a pathway reports while it runs. All methods are cheap and never raise."""

    def start(self) -> None:
        """Begin exporting (e.g. start the /metrics server)."""

    def stage(self, name: str) -> None:
        """Entering a named stage: load, baseline, prune, quantize, train, export, evaluate, ..."""
        log.info("stage: %s", name)

    def progress(self, fraction: float) -> None:
        """Overall progress of the run in [0, 1]."""

    def training_step(self, epoch: float, step: int, loss: float) -> None:
        """One optimizer step finished."""

    def evaluation(self, name: str, value: float) -> None:
        """An evaluation metric (accuracy, fidelity, ...) of the model being optimized."""

    def finish(self, report: Report | None, error: BaseException | None = None) -> None:
        """Run over (success when ``error`` is None): export final values, push, stop servers."""
