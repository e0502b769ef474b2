"""report.json: the schema of what a run gained and what it cost.

Every pathway fills the same ``Report``; ``summary()`` derives the termination message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .contract import RunSummary

REPORT_SCHEMA_VERSION = "1"
LATENCY_SAMPLES_CAP = 200


class LatencyStats(BaseModel):
    """onnxruntime timings of one model (milliseconds per batch)."""

    provider: str
    batch_size: int
    iterations: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    std_ms: float
    throughput_items_per_s: float
    samples_ms: list[float] | None = Field(
        None,
        description=f"per-iteration latencies (at most {LATENCY_SAMPLES_CAP}; evenly spaced ranks of the "
        "sorted timings when there were more): report.html plots their distribution",
    )


class ModelStats(BaseModel):
    """One model (baseline or optimized) measured the same way."""

    file_size_bytes: int
    compressed_size_bytes: int = Field(description="gzip size: zeros from sparsity only shrink this one")
    parameters: int | None = None
    sparsity: float = Field(0.0, description="fraction of zero weights in prunable layers")
    flops: int | None = Field(None, description="multiply-accumulates per sample, when counted")
    accuracy: float | None = None
    f1: float | None = Field(None, description="macro F1 over classes (--eval-metric f1 or recall)")
    recall: float | None = Field(None, description="macro recall over classes (--eval-metric f1 or recall)")
    map: float | None = Field(None, description="object detection: mAP@0.5:0.95 (COCO) on the val split")
    map50: float | None = Field(None, description="object detection: mAP@0.5")
    map_per_class: dict[str, float] | None = Field(
        None, description="object detection: mAP@0.5:0.95 per class with ground truth in the val split"
    )
    latency: LatencyStats | None = None


def set_metrics(stats: ModelStats, metrics: dict[str, Any]) -> None:
    """Evaluation results (``accuracy``, or a detector's ``map``, ``map50``, ``per_class``) onto
    a ModelStats, rounded; missing or None values leave the field as it is."""
    for key in ("accuracy", "map", "map50"):
        if metrics.get(key) is not None:
            setattr(stats, key, round(float(metrics[key]), 5))
    if metrics.get("per_class"):
        per_class = metrics["per_class"].items()
        stats.map_per_class = {k: round(float(v), 5) for k, v in per_class if v is not None}


class Fidelity(BaseModel):
    """Agreement of the optimized model's outputs with the baseline's on held-out samples."""

    samples: int
    top1_agreement: float | None = None
    cosine_similarity: float
    box_agreement: float | None = Field(
        None,
        description="detectors: confident detections matched to the baseline's (same class, IoU >= 0.5) "
        "over the larger detection count",
    )
    box_recall: float | None = Field(
        None, description="detectors: share of the baseline's detections matched"
    )
    box_mean_iou: float | None = Field(None, description="detectors: mean IoU of the matched detections")
    box_count: int | None = Field(
        None, description="detectors: the larger confident-detection count compared"
    )


class LayerReport(BaseModel):
    name: str
    op_type: str
    parameters: int
    sparsity: float
    quantized: bool | None = None
    note: str | None = None


class EpochRecord(BaseModel):
    epoch: float
    phase: str = "train"
    """dense (fine-tune before pruning; negative epochs), main, or qat (INT8 simulated: its
    val_accuracy is the simulated-INT8 accuracy)."""
    step: int
    train_loss: float
    val_accuracy: float | None = None
    val_map: float | None = Field(None, description="object detection: mAP@0.5:0.95 on the val split")
    val_map50: float | None = Field(None, description="object detection: mAP@0.5 on the val split")
    sparsity: float | None = None
    lr: float | None = None


class CandidateRecord(BaseModel):
    """One alternative the optimizer measured before choosing (quantization settings, ...)."""

    name: str
    chosen: bool
    latency_ms: float | None = None
    speedup: float | None = None
    fidelity: float | None = None
    """Top-1 agreement with the reference (classifiers), else cosine similarity."""
    cosine: float | None = None
    """Mean cosine similarity of the outputs to the reference's."""
    accuracy: float | None = None
    note: str | None = None


class Report(BaseModel):
    schema_version: str = REPORT_SCHEMA_VERSION
    experiment: dict[str, Any]
    status: Literal["succeeded"] = "succeeded"
    mode: Literal["baseline", "quantization-only", "unstructured", "channels"]
    settings: dict[str, Any] = Field(default_factory=dict, description="effective recipe / settings")
    baseline: ModelStats
    optimized: ModelStats
    fidelity: Fidelity | None = None
    speedup: float | None = Field(None, description="baseline mean latency / optimized mean latency")
    size_ratio: float | None = Field(None, description="optimized / baseline file size (below 1: smaller)")
    compressed_size_ratio: float | None = Field(None, description="optimized / baseline gzip size")
    layers: list[LayerReport] = Field(default_factory=list)
    candidates: list[CandidateRecord] = Field(default_factory=list)
    training: list[EpochRecord] = Field(default_factory=list)
    speedup_source: str = Field("", description="plain words: where the speedup (or none) came from")
    notes: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, *, baseline: ModelStats, optimized: ModelStats, **fields: Any) -> Report:
        """A report with its derived numbers (speedup, size ratios) computed here, the same way
        for every pathway."""
        return cls(
            baseline=baseline,
            optimized=optimized,
            speedup=measured_speedup(baseline, optimized),
            size_ratio=round(optimized.file_size_bytes / max(1, baseline.file_size_bytes), 4),
            compressed_size_ratio=round(
                optimized.compressed_size_bytes / max(1, baseline.compressed_size_bytes), 4
            ),
            **fields,
        )

    def summary(self) -> RunSummary:
        return RunSummary(
            status="succeeded",
            model_uri=self.artifacts.get("model"),
            report_uri=self.artifacts.get("report"),
            serving_uri=self.artifacts.get("serving"),
            mode=self.mode,
            baseline_accuracy=self.baseline.accuracy,
            optimized_accuracy=self.optimized.accuracy,
            fidelity=(
                self.fidelity.top1_agreement
                if self.fidelity and self.fidelity.top1_agreement is not None
                else (self.fidelity.cosine_similarity if self.fidelity else None)
            ),
            baseline_latency_ms=self.baseline.latency.mean_ms if self.baseline.latency else None,
            optimized_latency_ms=self.optimized.latency.mean_ms if self.optimized.latency else None,
            baseline_size_bytes=self.baseline.file_size_bytes,
            optimized_size_bytes=self.optimized.file_size_bytes,
            sparsity=self.optimized.sparsity,
            speedup=self.speedup,
        )


def measured_speedup(baseline: ModelStats, optimized: ModelStats) -> float | None:
    """Baseline mean latency / optimized mean latency (4 decimals); None without both timings."""
    if not baseline.latency or not optimized.latency or optimized.latency.mean_ms <= 0:
        return None
    return round(baseline.latency.mean_ms / optimized.latency.mean_ms, 4)
