"""One module per experiment type; each exposes ``run(ctx: RunContext) -> Report``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..spec import ExperimentType

if TYPE_CHECKING:
    from ..context import RunContext
    from ..report import Report

_MODULES = {
    ExperimentType.one_shot: "one_shot",
    ExperimentType.sparse_transfer: "sparse_transfer",
    ExperimentType.training_aware: "training_aware",
}


def get_pathway(kind: ExperimentType) -> Callable[[RunContext], Report]:
    """Import lazily: the one-shot pathway does not pay for transformers, and so on."""
    module = importlib.import_module(f"{__name__}.{_MODULES[kind]}")
    return module.run
