"""One-shot modifiers: post-training algorithms on an ONNX graph, in the ``Modifier`` contract.

Each acts on a ``OneShotState`` (the current model file, calibration and held-out samples,
the baseline's held-out outputs) and does its work in ``finalize``: it writes its output
model into the state's build folder, moves ``state.current`` to it, and returns notes,
per-layer records and the numbers the report shows. The outcome search
(``outcome/search.py``) builds one per pruning candidate; INT8 is its own search
(``modifiers/int8``), called by the outcome search on the candidates worth quantizing.

The numerical kernels live in their own modules (``onnx_pruning`` / ``obs`` for OBS and
magnitude pruning, ``channel_selection`` for structured OBS); these classes only adapt them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..recipes.schema import ChannelPruningConfig, UnstructuredPruningConfig
from ..speedup import ChannelCounts
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
    channel_profiles: dict = field(default_factory=dict)
    """Channel pruning's per-layer latencies and error curves, measured once for every MAC target."""
    detector: bool = False
    """An object detector: every output is kept (boxes and scores), fidelity compares boxes
    after NMS, and INT8 keeps the prediction convs and the decode after them in FP32."""

    def holdout_outputs(self, path: Path, label: str) -> Any:
        """The held-out outputs of the model at ``path``, computed once: the first output per
        sample, or for a detector every output (name -> array over the samples)."""
        if path not in self.outputs:
            show = f"evaluate {label}" if self.show_progress else None
            self.outputs[path] = outputs_on(path, self.holdout, self.detector, show)
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


def outputs_on(path: Path, samples: list[Sample], detector: bool, progress: str | None = None) -> Any:
    """A model's outputs on samples in the form fidelity and judges compare: the first output
    per sample, or for a detector every output (name -> array over the samples)."""
    from ..evaluate import run_onnx, run_onnx_outputs

    if detector:
        return run_onnx_outputs(path, samples)
    return run_onnx(path, samples, progress=progress)


def _save(model: Any, path: Path) -> Path:
    import onnx

    onnx.save(model, str(path))
    return path


@dataclass
class PruneResult(ModifierResult):
    """What a pruning modifier did, beside the notes and layers every modifier reports."""

    family: str = "unstructured"
    """``unstructured`` or ``channels``."""
    pruned_fidelity: float | None = None
    """Fidelity of the pruned model to the baseline on the held-out samples."""
    achieved_sparsity: float | None = None
    achieved_macs_fraction: float | None = None
    channels: ChannelCounts | None = None
    """Channel pruning: the channels removed and the MACs before/after."""
    rejected: bool = False
    """Channel pruning fell below its fidelity floor: the graph was left as it was."""


class UnstructuredPruning(Modifier):
    """OBS (SparseGPT-style, with the calibration Hessian) or magnitude pruning of weights."""

    def __init__(self, sparsity: float, *, method: str, config: UnstructuredPruningConfig) -> None:
        self.sparsity, self.method, self.config = sparsity, method, config

    def finalize(self, state: OneShotState) -> PruneResult:
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
        state.current = _save(result.model, state.build / f"pruned-unstructured-{self.sparsity:g}.onnx")
        seconds = round(time.perf_counter() - start, 3)
        state.evaluation("sparsity", result.achieved_sparsity)
        pruned = state.fidelity_to_baseline(state.current, "pruned")
        return PruneResult(
            notes=list(result.notes),
            layers=list(result.layers),
            timings_s={"prune": seconds},
            family="unstructured",
            achieved_sparsity=round(result.achieved_sparsity, 6),
            pruned_fidelity=round(pruned, 6),
        )


class ChannelPruning(Modifier):
    """Structured OBS: remove whole channels to a MAC target, refit the consumers; rejected
    (the graph left as it was) when the pruned model's fidelity falls below the floor."""

    def __init__(self, macs_reduction: float, *, config: ChannelPruningConfig) -> None:
        self.macs_reduction, self.config = macs_reduction, config
        self.floor = 1.0 - config.max_channels_fidelity_loss

    def finalize(self, state: OneShotState) -> PruneResult:
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
            profile_cache=state.channel_profiles,
        )
        pruned_path = _save(cres.model, state.build / f"pruned-channels-{self.macs_reduction:g}.onnx")
        seconds = round(time.perf_counter() - start, 3)
        channels = ChannelCounts(
            macs_before=cres.macs_before,
            macs_after=cres.macs_after,
            removed=cres.channels_removed,
            total=cres.channels_total,
            groups=cres.groups,
        )
        kept = round(cres.macs_after / max(1, cres.macs_before), 6)
        state.evaluation("macs_fraction", kept)
        score = state.fidelity_to_baseline(pruned_path, "pruned")
        result = PruneResult(
            notes=list(cres.notes),
            timings_s={"prune": seconds, **{f"channels_{k}": v for k, v in cres.timings_s.items()}},
            family="channels",
            achieved_macs_fraction=kept,
            pruned_fidelity=round(score, 6),
            channels=channels,
        )
        if score < self.floor:
            # never hand back a model that lost what channel pruning cost here: keep the graph's
            # channels and say so (INT8 after this still applies)
            result.rejected = True
            result.notes.append(
                f"channel pruning to {kept:.0%} of the MACs kept only {score:.1%} fidelity to the "
                f"baseline (floor {self.floor:.0%}, max_channels_fidelity_loss), so no channels were "
                "removed; lower --optim-level or use training-aware --structure channels, which "
                "recovers accuracy by fine-tuning"
            )
            return result
        state.current = pruned_path
        result.layers = list(cres.layers)
        return result
