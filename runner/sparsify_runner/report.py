"""report.json: the schema of what a run gained and what it cost.

Every pathway fills the same ``Report``; ``summary()`` derives the termination message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .contract import RunSummary

REPORT_SCHEMA_VERSION = "1"
LATENCY_SAMPLES_CAP = 200


CONTENDED_CPU_SHARE = 0.2
"""Share of this process's CPUs that other processes used while it timed, above which the
timings are reported as taken on a contended machine: with more runnable threads than cores,
onnxruntime's intra-op threads wait on descheduled peers and a multi-threaded FP32 model slows
far more than an INT8 one (MobileNetV2 on 2 busy cores: 1.46x on one run, 6.3x on the next)."""


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
    others_cpu_share: float | None = Field(
        None,
        description="share of this process's CPUs that other processes used while timing (Linux "
        "/proc/stat); above 0.2 the machine was contended and the report says so",
    )

    def contention_note(self) -> str | None:
        """One line for the report when the timings were taken on a contended machine."""
        if self.others_cpu_share is None or self.others_cpu_share <= CONTENDED_CPU_SHARE:
            return None
        return (
            f"the CPU was contended while timing (other processes used {self.others_cpu_share:.0%} of "
            "its cores): the speed figures may not hold on an idle deployment target; rerun on a "
            "machine with nothing else running"
        )


SpeedVerdict = Literal["identical model", "faster", "slower", "same within noise"]
MIN_SPEED_CHANGE = 0.02
"""A ratio within 2% of 1.0 is never called faster or slower, whatever its interval."""


class SpeedComparison(BaseModel):
    """Baseline vs optimized latency, by medians of alternating runs in one process."""

    ratio: float = Field(description="baseline median latency / optimized median latency")
    low: float = Field(description="5th percentile of the ratio over bootstrap resamples")
    high: float = Field(description="95th percentile of the ratio over bootstrap resamples")
    verdict: SpeedVerdict

    def words(self) -> str:
        """One wording everywhere: 'N.NNx faster', 'N.NNx slower' (always as baseline/optimized
        inverted), 'same speed (within noise)', 'unchanged (identical model)'."""
        if self.verdict == "identical model":
            return "unchanged (identical model)"
        if self.verdict == "faster":
            return f"{self.ratio:.2f}x faster"
        if self.verdict == "slower":
            return f"{1 / self.ratio:.2f}x slower"
        return f"same speed within noise ({self.ratio:.2f}x, 90% {self.low:.2f}-{self.high:.2f})"


def compare_speed(
    baseline: LatencyStats, optimized: LatencyStats, *, identical: bool = False
) -> SpeedComparison:
    """Median ratio with a bootstrap interval (fixed seed); an identical model is 1.00 exactly."""
    import numpy as np

    if identical:
        return SpeedComparison(ratio=1.0, low=1.0, high=1.0, verdict="identical model")
    ratio = baseline.median_ms / optimized.median_ms if optimized.median_ms > 0 else 1.0
    b = np.asarray(baseline.samples_ms or [baseline.median_ms])
    o = np.asarray(optimized.samples_ms or [optimized.median_ms])
    rng = np.random.default_rng(0)
    boot = [
        np.median(rng.choice(b, len(b))) / max(np.median(rng.choice(o, len(o))), 1e-12) for _ in range(400)
    ]
    low, high = float(np.percentile(boot, 5)), float(np.percentile(boot, 95))
    if low > 1.0 and ratio >= 1.0 + MIN_SPEED_CHANGE:
        verdict: SpeedVerdict = "faster"
    elif high < 1.0 and ratio <= 1.0 - MIN_SPEED_CHANGE:
        verdict = "slower"
    else:
        verdict = "same within noise"
    return SpeedComparison(ratio=round(ratio, 4), low=round(low, 4), high=round(high, 4), verdict=verdict)


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
    val_perplexity: float | None = Field(None, description="text-generation: held-out perplexity")
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
    stage: str | None = Field(None, description="pruning, int8 or pruning+int8 (the outcome search)")
    accuracy_drop: float | None = Field(
        None, description="drop of the budget's metric against the baseline on the tuning split"
    )
    accuracy_drop_interval: list[float] | None = None
    accept_drop: float | None = Field(None, description="the same on the acceptance split (finalists)")
    size_bytes: int | None = None
    compressed_size_bytes: int | None = None
    macs_fraction: float | None = None
    sparsity: float | None = None
    within_budget: bool | None = None
    pareto: bool | None = Field(None, description="on the front of accuracy drop vs speed (or size)")


class Report(BaseModel):
    schema_version: str = REPORT_SCHEMA_VERSION
    experiment: dict[str, Any]
    status: Literal["succeeded"] = "succeeded"
    mode: Literal["baseline", "quantization-only", "unstructured", "channels"]
    settings: dict[str, Any] = Field(default_factory=dict, description="effective recipe / settings")
    baseline: ModelStats
    optimized: ModelStats
    fidelity: Fidelity | None = None
    speedup: float | None = Field(None, description="baseline median latency / optimized median latency")
    speed: SpeedComparison | None = Field(
        None, description="the speedup with its interval and verdict (faster, slower, within noise)"
    )
    policy: dict[str, Any] | None = Field(
        None, description="what the optim level bought: budget, objective, search space, the choice"
    )
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
    def of(
        cls, *, baseline: ModelStats, optimized: ModelStats, identical: bool = False, **fields: Any
    ) -> Report:
        """A report with its derived numbers (speedup, size ratios) computed here, the same way
        for every pathway. ``identical``: the optimized file is the baseline's bytes (1.00x)."""
        speed = None
        if baseline.latency and optimized.latency and optimized.latency.median_ms > 0:
            speed = compare_speed(baseline.latency, optimized.latency, identical=identical)
        return cls(
            baseline=baseline,
            optimized=optimized,
            speedup=speed.ratio if speed else None,
            speed=speed,
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
            baseline_latency_ms=self.baseline.latency.median_ms if self.baseline.latency else None,
            optimized_latency_ms=self.optimized.latency.median_ms if self.optimized.latency else None,
            baseline_size_bytes=self.baseline.file_size_bytes,
            optimized_size_bytes=self.optimized.file_size_bytes,
            sparsity=self.optimized.sparsity,
            speedup=self.speedup,
        )


def measured_speedup(baseline: ModelStats, optimized: ModelStats) -> float | None:
    """Baseline median latency / optimized median latency (4 decimals); None without both."""
    if not baseline.latency or not optimized.latency or optimized.latency.median_ms <= 0:
        return None
    return round(baseline.latency.median_ms / optimized.latency.median_ms, 4)
