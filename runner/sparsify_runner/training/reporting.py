"""The report of a training run: the shared measurements plus what the pathway adds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from ..context import RunContext
from ..report import LayerReport, Report, measured_speedup
from ..speedup import ChannelCounts, explain_speedup
from .loop import prunable_sparsity

if TYPE_CHECKING:
    from ..report import EpochRecord
    from .finish import OnnxOutcome


@dataclass
class ReportExtras:
    """What one training pathway adds to the report once training is done."""

    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    """Layer rows before model.onnx's own (channel pruning: the width changes)."""
    channels: ChannelCounts | None = None
    """MACs per sample before/after channel pruning; None when no channels were pruned."""
    sparsity: float = 0.0
    """The sparsity the speedup explanation names."""


def build_report(
    ctx: RunContext,
    *,
    mode: str,
    settings: dict[str, Any],
    onnx: OnnxOutcome,
    history: list[EpochRecord],
    notes: list[str],
    extras: ReportExtras,
) -> Report:
    baseline, optimized = onnx.baseline, onnx.optimized
    speedup = measured_speedup(baseline, optimized)
    int8_method = onnx.int8.method if onnx.int8 else None
    settings = {
        **settings,
        "int8_method": int8_method or "none (FP32)",
        "int8_source": onnx.int8.source.value if onnx.int8 else None,
        "fp32_accuracy": round(onnx.fp32_accuracy, 5),
    }
    if extras.channels:
        baseline.flops = baseline.flops or extras.channels.macs_before
        optimized.flops = optimized.flops or extras.channels.macs_after
    return Report.of(
        experiment=ctx.experiment.to_wire(),
        mode=mode,
        settings=settings,
        baseline=baseline,
        optimized=optimized,
        layers=extras.layers + list(onnx.layers),
        candidates=onnx.candidates,
        training=history,
        speedup_source=explain_speedup(
            mode, speedup, int8=int8_method, sparsity=extras.sparsity, channels=extras.channels
        ),
        notes=notes + onnx.notes,
    )


def channel_layers(before: nn.Module, after: nn.Module) -> list[LayerReport]:
    """Per-layer width changes of a structurally pruned model (as LayerReport notes)."""
    out = []
    old = dict(before.named_modules())
    for name, m in after.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and name in old:
            o = old[name]
            a = o.out_channels if isinstance(o, nn.Conv2d) else o.out_features
            b = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            if a != b:
                out.append(
                    LayerReport(
                        name=name,
                        op_type=type(m).__name__,
                        parameters=m.weight.numel(),
                        sparsity=round(1 - b / a, 4),
                        note=f"outputs {a} -> {b} (structured)",
                    )
                )
    return out


def torch_param_stats(model: nn.Module) -> dict[str, Any]:
    """The shipped PyTorch model's parameter count and prunable-layer sparsity (report settings)."""
    return {
        "torch_parameters": sum(p.numel() for p in model.parameters()),
        "torch_sparsity": round(prunable_sparsity(model), 5),
    }
