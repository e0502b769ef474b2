"""One module per experiment type; each exposes ``run(ctx: RunContext) -> Report``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..spec import TEXT_GENERATION, ExperimentType

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
    if kind is ExperimentType.one_shot:
        return _one_shot
    if kind in _LLM_TRAINING:
        return _training(kind)
    module = importlib.import_module(f"{__name__}.{_MODULES[kind]}")
    return module.run


_LLM_TRAINING = {
    ExperimentType.training_aware: "run_training_aware",
    ExperimentType.sparse_transfer: "run_sparse_transfer",
}


def _training(kind: ExperimentType) -> Callable[[RunContext], Report]:
    """text-generation trains a causal LM (llm/training_pathway.py); every other use case its own way."""

    def run(ctx: RunContext) -> Report:
        if ctx.experiment.use_case == TEXT_GENERATION:
            llm = importlib.import_module("sparsify_runner.llm.training_pathway")
            return getattr(llm, _LLM_TRAINING[kind])(ctx)
        return importlib.import_module(f"{__name__}.{_MODULES[kind]}").run(ctx)

    return run


def _one_shot(ctx: RunContext) -> Report:
    """text-generation runs one-shot through llm-compressor (llm/); every other use case on ONNX."""
    if ctx.experiment.use_case == TEXT_GENERATION:
        return importlib.import_module("sparsify_runner.llm.pathway").run(ctx)
    return importlib.import_module(f"{__name__}.one_shot").run(ctx)
