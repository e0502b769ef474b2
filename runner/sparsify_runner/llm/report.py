"""report.json for a text-generation run: the project's Report with perplexity where it fits.

``LlmReport`` extends ``report.Report`` (readers that know only ``Report`` ignore the extra
section): ``perplexity`` holds the baseline and shipped model's held-out perplexity with
intervals, the relative increase against the budget, and the perplexity transformers gets
after reloading the saved folder. Each candidate is a ``CandidateRecord`` whose
``accuracy_drop`` is the budget's metric, the relative perplexity increase.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pydantic import BaseModel, Field

from ..report import CandidateRecord, LatencyStats, ModelStats, Report, SpeedComparison
from .generations import GenerationsReport

GZIP_LEVEL = 1
"""Fast deflate for multi-GB folders; zeros and repeated bytes still shrink."""
WEIGHT_SUFFIXES = (".safetensors",)


class LlmCandidate(CandidateRecord):
    scheme: str | None = None
    perplexity: float | None = None
    perplexity_interval: list[float] | None = None
    compress_seconds: float | None = None


class PerplexityReport(BaseModel):
    windows: int
    sequence_length: int
    tokens_scored: int
    baseline: float
    baseline_interval: list[float]
    optimized: float
    optimized_interval: list[float]
    increase: float = Field(description="optimized / baseline perplexity - 1 on the same windows")
    increase_interval: list[float] = Field(description="paired bootstrap over windows, 90%")
    budget: float
    reloaded: float | None = Field(
        None, description="perplexity of the published folder reloaded with transformers (same windows)"
    )


class OnnxModelSpeed(BaseModel):
    """One CPU ONNX export timed on onnxruntime at batch 1 (``onnx_decode.time_models``)."""

    weights: str = Field(description="int4 (MatMulNBits) or fp32 (MatMul)")
    prefill: LatencyStats = Field(description="ms per prompt of prefill_tokens tokens, one sample per prompt")
    decode: LatencyStats = Field(description="ms per generated token with the KV cache, one sample per token")
    decode_tokens_per_s: float = Field(description="1000 / decode.median_ms")
    memory_bytes: int | None = Field(
        None, description="resident memory the session added once loaded and warmed up (RSS delta)"
    )
    size_bytes: int = Field(description="model.onnx + its external data")
    perplexity: float | None = Field(None, description="held-out perplexity of this ONNX model, same windows")
    perplexity_interval: list[float] | None = None


class CpuExportReport(BaseModel):
    """The CPU deployment: ``onnx/`` beside ``model/``, timed against the dense FP32 export."""

    folder: str
    weights: str
    block_size: int | None
    accuracy_level: int
    prefill_tokens: int
    decode_tokens: int = Field(description="greedy tokens per timed round")
    rounds: int
    dense: OnnxModelSpeed
    shipped: OnnxModelSpeed
    decode_speed: SpeedComparison = Field(description="dense / shipped median ms per decoded token")
    prefill_speed: SpeedComparison
    torch_perplexity: float = Field(
        description="the shipped model's perplexity in torch (GPTQ fake-quantized)"
    )
    perplexity_matches: bool = Field(description="shipped ONNX perplexity within 0.1% of torch's")


class LlmReport(Report):
    candidates: list[LlmCandidate] = Field(default_factory=list)
    perplexity: PerplexityReport
    cpu_export: CpuExportReport | None = Field(
        None, description="the onnxruntime CPU export and its decode speed (--deploy-device cpu)"
    )
    data: dict = Field(default_factory=dict, description="where calibration and held-out windows came from")
    generations: GenerationsReport | None = Field(
        None, description="greedy continuations of a few held-out prompts by the dense and the shipped model"
    )


def folder_stats(folder: Path, parameters: int, sparsity: float = 0.0) -> ModelStats:
    """Bytes of the weight files, their deflate size, parameters, zero share of the quantized layers."""
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    size = sum(p.stat().st_size for p in files)
    return ModelStats(
        file_size_bytes=size,
        compressed_size_bytes=sum(_deflated(p) for p in files),
        parameters=parameters,
        sparsity=round(sparsity, 6),
    )


def _deflated(path: Path, chunk: int = 1 << 22) -> int:
    packer = zlib.compressobj(GZIP_LEVEL)
    total = 0
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            total += len(packer.compress(block))
    return total + len(packer.flush())
