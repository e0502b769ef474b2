"""One-shot modifiers: post-training algorithms on an ONNX graph, in the ``Modifier`` contract.

Each acts on a ``OneShotState`` (the current model file, calibration and held-out samples,
the baseline's held-out outputs) and does its work in ``finalize``: it writes its output
model into the state's build folder, moves ``state.current`` to it, and returns notes,
per-layer records, candidates and the numbers the report shows. The one-shot pathway runs
the list ``plan`` builds from the typed recipe and the optim level, in order.

The numerical kernels live in their own modules (``onnx_pruning`` / ``obs`` for OBS and
magnitude pruning, ``channel_selection`` for structured OBS, ``int8`` for the INT8
search with its equalization and GPTQ candidates); these classes only adapt them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..recipes.schema import (
    ChannelPruningConfig,
    Int8SearchConfig,
    OneShotRecipe,
    UnstructuredPruningConfig,
)
from .base import Modifier, ModifierResult

Sample = dict[str, np.ndarray]


@dataclass
class OneShotState:
    """What one-shot modifiers read and move forward."""

    baseline: Path
    current: Path
    build: Path
    calibration: list[Sample]
    holdout: list[Sample]
    baseline_outputs: list[Any]
    model: Any = None
    """The loaded ``onnx.ModelProto`` of the input (pruning modifiers start from it)."""
    show_progress: bool = False
    telemetry: Any = None
    outputs: dict[Path, Any] = field(default_factory=dict)
    """Held-out outputs already computed, by model file (each model is run once)."""
    detector: bool = False
    """An object detector: every output is kept (boxes and scores), fidelity compares boxes
    after NMS, and INT8 keeps the prediction convs and the decode after them in FP32."""

    def holdout_outputs(self, path: Path, label: str) -> Any:
        """The held-out outputs of the model at ``path``, computed once: the first output per
        sample, or for a detector every output (name -> array over the samples)."""
        from ..evaluate import run_onnx, run_onnx_outputs

        if path not in self.outputs:
            if self.detector:
                self.outputs[path] = run_onnx_outputs(path, self.holdout)
            else:
                show = f"evaluate {label}" if self.show_progress else None
                self.outputs[path] = run_onnx(path, self.holdout, progress=show)
        return self.outputs[path]

    def fidelity(self, path: Path, label: str):
        """``Fidelity`` of the model at ``path`` to the baseline on the held-out samples."""
        from ..evaluate import fidelity

        outputs = self.holdout_outputs(path, label)
        if self.detector:
            from ..detection.fidelity import detection_fidelity

            return detection_fidelity(self.baseline_outputs, outputs)
        return fidelity(self.baseline_outputs, outputs)

    def fidelity_to_baseline(self, path: Path, label: str) -> float:
        """Top-1 agreement (else box agreement, else cosine) with the baseline, held out."""
        from ..evaluate import fidelity_score

        return fidelity_score(self.fidelity(path, label))

    def stage(self, name: str) -> None:
        if self.telemetry is not None:
            self.telemetry.stage(name)

    def evaluation(self, name: str, value: float) -> None:
        if self.telemetry is not None:
            self.telemetry.evaluation(name, value)


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.save(model, str(path))
    return path


class UnstructuredPruning(Modifier):
    """OBS (SparseGPT-style, with the calibration Hessian) or magnitude pruning of weights."""

    def __init__(self, sparsity: float, *, method: str, config: UnstructuredPruningConfig) -> None:
        self.sparsity, self.method, self.config = sparsity, method, config

    def finalize(self, state: OneShotState) -> ModifierResult:
        from .onnx_pruning import prune_onnx

        state.stage("prune")
        start = time.perf_counter()
        result = prune_onnx(
            state.model,
            state.calibration,
            self.sparsity,
            method=self.method,
            show_progress=state.show_progress,
            allocation=self.config.pruning_allocation,
            sensitivity_samples=self.config.sensitivity_samples,
        )
        state.current = _save(result.model, state.build / "pruned.onnx")
        seconds = round(time.perf_counter() - start, 3)
        state.evaluation("sparsity", result.achieved_sparsity)
        pruned = state.fidelity_to_baseline(state.current, "pruned")
        return ModifierResult(
            notes=list(result.notes),
            layers=list(result.layers),
            timings_s={"prune": seconds},
            info={
                "achieved_sparsity": round(result.achieved_sparsity, 6),
                "pruned_fidelity": round(pruned, 6),
            },
        )


class ChannelPruning(Modifier):
    """Structured OBS: remove whole channels to a MAC target, refit the consumers; rejected
    (the graph left as it was) when the pruned model's fidelity falls below the floor."""

    def __init__(self, macs_reduction: float, *, config: ChannelPruningConfig) -> None:
        self.macs_reduction, self.config = macs_reduction, config
        self.floor = 1.0 - config.max_channels_fidelity_loss

    def finalize(self, state: OneShotState) -> ModifierResult:
        from .channel_selection import prune_channels

        state.stage("prune")
        start = time.perf_counter()
        cres = prune_channels(
            state.model,
            state.calibration,
            self.macs_reduction,
            round_to=self.config.round_channels_to,
            max_fraction=self.config.max_channels_removed,
            show_progress=state.show_progress,
        )
        pruned_path = _save(cres.model, state.build / "pruned.onnx")
        seconds = round(time.perf_counter() - start, 3)
        channels = {
            "removed": cres.channels_removed,
            "total": cres.channels_total,
            "groups": cres.groups,
            "macs_before": cres.macs_before,
            "macs_after": cres.macs_after,
        }
        kept = round(cres.macs_after / max(1, cres.macs_before), 6)
        state.evaluation("macs_fraction", kept)
        score = state.fidelity_to_baseline(pruned_path, "pruned")
        info: dict[str, Any] = {
            "achieved_macs_fraction": kept,
            "channels": {**channels, "timings_s": cres.timings_s},
            "pruned_fidelity": round(score, 6),
        }
        if score < self.floor:
            # never hand back a model that lost what channel pruning cost here: keep the graph's
            # channels and say so (INT8 after this still applies)
            info["channels_rejected"] = True
            note = (
                f"channel pruning to {kept:.0%} of the MACs kept only {score:.1%} fidelity to the "
                f"baseline (floor {self.floor:.0%}, max_channels_fidelity_loss), so no channels were "
                "removed; lower --optim-level or use training-aware --structure channels, which "
                "recovers accuracy by fine-tuning"
            )
            return ModifierResult(notes=[*cres.notes, note], timings_s={"prune": seconds}, info=info)
        state.current = pruned_path
        info["channel_summary"] = channels
        return ModifierResult(
            notes=list(cres.notes), layers=list(cres.layers), timings_s={"prune": seconds}, info=info
        )


class Int8Search(Modifier):
    """Static INT8 chosen by measurement: candidates (per-tensor / per-channel, reduce_range,
    channel equalization, GPTQ rounding, FP32 fallbacks for sensitive nodes) are timed and
    checked for fidelity on held-out samples; the fastest faithful one wins, else FP32."""

    def __init__(self, *, quant_format: str, config: Int8SearchConfig) -> None:
        self.quant_format, self.config = quant_format, config

    def finalize(self, state: OneShotState) -> ModifierResult:
        from .int8 import quantize_int8

        state.stage("quantize")
        start = time.perf_counter()
        q = quantize_int8(
            state.current,
            state.calibration,
            state.build / "int8.onnx",
            holdout=state.holdout,
            quant_format=self.quant_format,
            max_fidelity_loss=self.config.max_int8_fidelity_loss,
            show_progress=state.show_progress,
            bench_seconds=self.config.int8_candidate_seconds,
            time_budget_s=self.config.int8_search_seconds,
            equalize=self.config.int8_equalization,
            detector=state.detector,
        )
        if q.quantized:  # else q.path is a copy of the input: keep the input (and its outputs)
            state.current = q.path
        return ModifierResult(
            notes=list(q.notes),
            candidates=list(q.candidates),
            timings_s={"quantize": round(time.perf_counter() - start, 3)},
            info={
                "int8": {"chosen": q.chosen, "fp32_nodes": q.fp32_nodes, **q.settings},
                "int8_applied": q.quantized,
            },
        )


def plan(
    recipe: OneShotRecipe, *, target: float, channels: bool, method: str, int8: bool, quant_format: str
) -> list[Modifier]:
    """The one-shot recipe as modifiers, in the order they run (pruning if any, then INT8),
    each given its own part of the recipe."""
    modifiers: list[Modifier] = []
    if target > 0 and channels:
        modifiers.append(ChannelPruning(target, config=recipe.config(ChannelPruningConfig)))
    elif target > 0:
        modifiers.append(
            UnstructuredPruning(target, method=method, config=recipe.config(UnstructuredPruningConfig))
        )
    if int8:
        modifiers.append(Int8Search(quant_format=quant_format, config=recipe.config(Int8SearchConfig)))
    return modifiers
