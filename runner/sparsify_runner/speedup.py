"""Where a run's measured speedup came from, in one sentence for the report: the one writer
both the one-shot and the training pathways use (``Report.speedup_source``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelCounts:
    """What channel pruning removed: MACs per sample before/after, and (one-shot) how many
    of the removable channels in how many dependency groups."""

    macs_before: int
    macs_after: int
    removed: int | None = None
    total: int | None = None
    groups: int | None = None


def explain_speedup(
    mode: str,
    speedup: float | None,
    *,
    int8: str | None,
    sparsity: float = 0.0,
    channels: ChannelCounts | None = None,
) -> str:
    """``mode``: baseline / quantization-only / unstructured / channels; ``int8``: how the
    shipped model was quantized (None: it was not)."""
    if mode == "baseline":
        return "optim level 0: the baseline model is returned unchanged, so there is no speedup"
    measured = f"measured speedup {speedup:.2f}x" if speedup else "speedup not measured"
    quant = f"INT8 quantization ({int8})" if int8 else None
    if mode == "channels" and channels is not None:
        before, after = channels.macs_before, channels.macs_after
        which = (
            f" ({channels.removed} of {channels.total} removable channels, {channels.groups} layer groups)"
            if channels.removed is not None
            else ""
        )
        return (
            f"{measured} comes from structured pruning, which removed whole channels/heads/neurons{which}: "
            f"MACs per sample {before:,} -> {after:,} ({before / max(1, after):.2f}x fewer), fewer FLOPs on "
            f"any runtime; " + (f"plus {quant}" if quant else "INT8 was not applied")
        )
    parts = [
        f"{measured} comes from {quant}"
        if quant
        else f"{measured}: INT8 was not applied, so no speedup is expected"
    ]
    if mode == "quantization-only" and quant:
        parts[0] += " only (no pruning at this optim level)"
    if mode == "unstructured" and sparsity > 0:
        parts.append(
            f"the {sparsity:.0%} unstructured sparsity makes the model smaller once compressed, but "
            "onnxruntime multiplies zeros like any weight, so it contributes no speed "
            "(use --structure channels)"
        )
    return "; ".join(parts)
