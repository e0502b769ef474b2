"""Report objects of every mode, built directly (no run needed)."""

from __future__ import annotations

import json
from pathlib import Path

from sparsify_runner.report import (
    CandidateRecord,
    EpochRecord,
    Fidelity,
    LatencyStats,
    LayerReport,
    ModelStats,
    Report,
)

MODES = ("baseline", "quantization-only", "unstructured", "channels")


def latency(mean: float, *, samples: bool = True) -> LatencyStats:
    values = [round(mean * (0.9 + 0.2 * ((i * 37) % 50) / 50), 4) for i in range(50)] if samples else None
    return LatencyStats(
        provider="CPUExecutionProvider",
        batch_size=1,
        iterations=50,
        mean_ms=mean,
        median_ms=mean,
        p90_ms=round(mean * 1.08, 4),
        std_ms=round(mean * 0.05, 4),
        throughput_items_per_s=round(1000 / mean, 3),
        samples_ms=values,
    )


def make_report(
    mode: str = "unstructured",
    *,
    level: float = 0.5,
    accuracy: float | None = 0.90,
    speedup: float = 2.0,
    size: int = 2_000_000,
    training: bool = False,
    samples: bool = True,
    name: str | None = None,
) -> Report:
    """A plausible report; ``mode`` decides which sections have data."""
    base_ms = 4.0
    sparsity = {"baseline": 0.0, "quantization-only": 0.0, "unstructured": 0.6, "channels": 0.35}[mode]
    layers = (
        [
            LayerReport(
                name=f"features.{i}.conv",
                op_type="Conv",
                parameters=1000 * (i + 1),
                sparsity=sparsity,
                quantized=mode != "baseline",
            )
            for i in range(12)
        ]
        if mode in ("unstructured", "channels")
        else []
    )
    candidates = (
        [
            CandidateRecord(
                name="qdq-per-channel",
                chosen=True,
                latency_ms=base_ms / speedup,
                speedup=speedup,
                fidelity=0.97,
                cosine=0.998,
            ),
            CandidateRecord(
                name="qdq-per-tensor",
                chosen=False,
                latency_ms=base_ms / (speedup + 0.2),
                speedup=speedup + 0.2,
                fidelity=0.91,
                cosine=0.99,
            ),
        ]
        if mode != "baseline"
        else []
    )
    history = (
        [
            EpochRecord(
                epoch=e / 2,
                phase="main" if e < 8 else "qat",
                step=10 * e,
                train_loss=2 / (1 + e),
                val_accuracy=0.5 + 0.04 * e,
                sparsity=min(sparsity, 0.1 * e),
                lr=1e-3,
            )
            for e in range(10)
        ]
        if training
        else []
    )
    exp = {
        "type": "training-aware" if training else "one-shot",
        "useCase": "image-classification",
        "optimLevel": level,
        "model": "model.onnx",
        "data": "calib/",
        "output": "out/",
    }
    if name:
        exp["name"] = name
    return Report(
        experiment=exp,
        mode=mode,
        baseline=ModelStats(
            file_size_bytes=8_000_000,
            compressed_size_bytes=7_400_000,
            parameters=2_000_000,
            accuracy=0.91 if accuracy is not None else None,
            latency=latency(base_ms, samples=samples),
        ),
        optimized=ModelStats(
            file_size_bytes=size,
            compressed_size_bytes=size // 2,
            parameters=2_000_000,
            sparsity=sparsity,
            accuracy=accuracy,
            latency=latency(base_ms / speedup, samples=samples),
        ),
        fidelity=Fidelity(samples=40, top1_agreement=0.97, cosine_similarity=0.998),
        speedup=speedup,
        size_ratio=round(size / 8_000_000, 3),
        compressed_size_ratio=round((size // 2) / 7_400_000, 3),
        layers=layers,
        candidates=candidates,
        training=history,
        speedup_source=f"measured speedup {speedup:.2f}x comes from INT8 quantization",
        notes=['a note with <markup> & "quotes"'],
        timings_s={"total": 12.5},
        artifacts={"model": "out/model.onnx", "report": "out/report.json"},
    )


def write_run(folder: Path, report: Report) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return folder


def old_report_json(report: Report) -> str:
    """The same report as an older runner wrote it: no ``samples_ms`` field at all."""
    data = json.loads(report.model_dump_json())
    for side in ("baseline", "optimized"):
        if data[side].get("latency"):
            data[side]["latency"].pop("samples_ms", None)
    return json.dumps(data)
