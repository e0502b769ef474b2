"""INT8 search, stage 2: build one candidate (``quantize_static`` with given settings and
FP32 nodes, calibration ranges cached per source model), measure its fidelity on held-out
samples and its latency next to the FP32 model, and remember every measurement."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...evaluate import fidelity, fidelity_score, make_session, run_onnx_outputs, run_session
from ...onnx_graph.feeds import batch_size, stack_batches
from ...outcome.judge import Assessment, Judge
from ...report import Fidelity, LatencyStats
from .transformer import QuantScope, quant_scope, quantize_dynamic_int8

log = logging.getLogger("sparsify.quantization")

Sample = dict[str, np.ndarray]


@dataclass
class Candidate:
    name: str
    path: Path
    settings: dict
    exclude: list[str]
    fidelity: Fidelity
    score: float
    speedup: float
    latency_ms: float
    note: str | None = None
    assessment: Assessment | None = None
    """Against the baseline, when the builder has the outcome search's judge."""
    retimed: bool = False
    """The speedup is from the side-by-side re-timing of the close contenders (``retime``)."""
    latency: LatencyStats | None = None
    """The re-timing's latency statistics (samples included), for comparing contenders."""


class CalibrationReader:
    """CalibrationDataReader over samples without batch dim, batched to the model's batch size."""

    def __init__(self, samples: list[Sample], batch: int) -> None:
        self._samples, self._batch = samples, batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        yield from stack_batches(self._samples, self._batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Batches [start, end) only: onnxruntime's strided calibration (CalibStridedMinMax)
        collects a few batches at a time instead of holding every activation of every sample."""
        b = self._batch
        sub = CalibrationReader(self._samples[start_index * b : end_index * b], b)
        self._it = sub._feeds()

    def stride(self, most: int = 8) -> int:
        """The largest number of batches <= ``most`` that divides the batch count."""
        n = len(self)
        return max(d for d in range(1, min(most, n) + 1) if n % d == 0)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return -(-len(self._samples) // self._batch)


def model_batch_size(model: onnx.ModelProto) -> int:
    return batch_size(model, {i.name for i in model.graph.initializer})


class CandidateBuilder:
    """Builds, evaluates and times candidates; remembers every measurement."""

    def __init__(
        self,
        fp32_path: Path,
        pre: Path,
        calibration: list[Sample],
        holdout: list[Sample],
        work: Path,
        quant_format: str,
        bench_seconds: float,
        bar,
        equalized_chains: int = 0,
        always_fp32: list[str] | None = None,
        detection: bool = False,
        judge: Judge | None = None,
    ) -> None:
        from ...quant_format import onnxruntime_quant_format

        self.fp32_path, self.pre, self.work = fp32_path, pre, work
        self.calibration, self.holdout = calibration, holdout
        pre_model = onnx.load(str(pre), load_external_data=False)
        self.batch = model_batch_size(pre_model)
        self.scope: QuantScope = quant_scope(pre_model)
        """What a static candidate quantizes: every supported op, or for a graph with attention
        the weight layers only, with float outputs (``transformer.quant_scope``)."""
        self.format = onnxruntime_quant_format(quant_format)
        self.bench_seconds = bench_seconds
        self.bar = bar
        self.detection = detection
        self.judge = judge
        """Compare candidates as detectors (every output, boxes after NMS), not by the first output."""
        self.reference = self.outputs(fp32_path)
        self.done: list[Candidate] = []
        self._cache: dict[tuple[str, Path], Path] = {}
        self.longest_build_s = 0.0
        """The slowest candidate so far (quantize + evaluate + time): the next one's estimate."""
        self.calibrated_build_s = 0.0
        """The first candidate, MinMax calibration included: the unit for the costlier steps."""
        self.equalized_chains = equalized_chains
        """Conv -> depthwise Conv chains whose channel ranges ``pre`` has equalized."""
        self.always_fp32 = list(always_fp32 or [])
        """Nodes every candidate keeps in FP32 (a detector's decode tail), besides its own."""
        self.gptq_models: dict[int, Path] = {}
        self.gptq_notes: list[str] = []

    def outputs(self, path: Path) -> Any:
        """A model's outputs on the held-out samples, in the form ``fidelity`` compares."""
        if self.detection:
            return run_onnx_outputs(path, self.holdout)
        return run_session(make_session(path), self.holdout)

    def fidelity(self, outputs: Any) -> Fidelity:
        if self.detection:
            from ...detection.fidelity import detection_fidelity

            return detection_fidelity(self.reference, outputs)
        return fidelity(self.reference, outputs)

    def gptq_model(self, reduce_range: bool) -> Path:
        """The pre-processed model with GPTQ-rounded, bias-corrected weights on the grid that
        ``quantize_static`` uses for these settings (built once per grid)."""
        from ..onnx_gptq import gptq_onnx

        qmax = 64 if reduce_range else 127
        if qmax not in self.gptq_models:
            self.bar.update(description="quantize: GPTQ weight rounding")
            result = gptq_onnx(onnx.load(str(self.pre)), self.calibration, qmax=qmax, max_rows=32_768)
            path = self.work / f"gptq-{qmax}.onnx"
            onnx.save(result.model, str(path))
            self.gptq_models[qmax] = path
            self.gptq_notes.extend(result.notes)
            self.bar.update(description="quantize: measure INT8 candidates")
            log.info("GPTQ (qmax %d): %d layers, %s", qmax, result.layers, result.timings_s)
        return self.gptq_models[qmax]

    def build(
        self,
        name: str,
        *,
        activation: str = "u8",
        reduce_range: bool = False,
        exclude: list[str] | None = None,
        method: str = "minmax",
        gptq: bool = False,
        note: str | None = None,
    ) -> Candidate:
        from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

        from ...benchmark import measure_latency

        exclude = list(exclude or [])
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
        fp32_nodes = exclude + self.always_fp32 + self.scope.fp32_nodes
        source = self.gptq_model(reduce_range) if gptq else self.pre
        t0 = time.perf_counter()  # the GPTQ pass above is not a candidate's cost
        path = self.work / f"candidate-{len(self.done)}.onnx"
        if method == "dynamic":  # weights only; activations quantized per call (u8), no calibration
            activation = "u8"
            with quiet_quantizer():
                quantize_dynamic_int8(source, path, reduce_range=reduce_range, exclude=fp32_nodes)
        else:
            cache = self._cache.setdefault(
                (method, source), self.work / f"calibration-{method}-{len(self._cache)}.json"
            )
            reader = None if cache.exists() else CalibrationReader(self.calibration, self.batch)
            extra: dict = {"CalibMovingAverage": False, **self.scope.extra_options}
            if reader is not None:
                extra["CalibStridedMinMax"] = reader.stride()
            with quiet_quantizer():
                quantize_static(
                    str(source),
                    str(path),
                    reader,
                    quant_format=self.format,
                    op_types_to_quantize=self.scope.op_types,
                    per_channel=True,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=fp32_nodes,
                    calibrate_method=methods[method],
                    calibration_cache_path=str(cache),
                    extra_options=extra,
                )
        outputs = self.outputs(path)
        fid = self.fidelity(outputs)
        base, cand = measure_latency(
            [self.fp32_path, path], seconds=self.bench_seconds, warmup=3, min_iterations=5
        )
        c = Candidate(
            name=name,
            path=path,
            settings={
                "format": self.format.name.lower(),
                "activations": activation,
                "weights": "s8",
                "weight_rounding": "gptq" if gptq else "nearest",
                "per_channel": True,
                "reduce_range": reduce_range,
                "calibration": method,  # "dynamic": quantize_dynamic (no calibration, any format)
                "equalized_chains": self.equalized_chains,
                "fp32_nodes": len(exclude),
            },
            exclude=exclude,
            fidelity=fid,
            score=fidelity_score(fid),
            speedup=round(base.median_ms / cand.median_ms, 4),
            latency_ms=cand.median_ms,
            note=note,
            assessment=None if self.judge is None else self.judge.assess(outputs),
        )
        self.done.append(c)
        spent = time.perf_counter() - t0
        self.longest_build_s = max(self.longest_build_s, spent)
        self.calibrated_build_s = self.calibrated_build_s or spent
        self.bar.advance()
        log.info("candidate %s: fidelity %.4f speedup %.3f", name, c.score, c.speedup)
        return c


    def retime(self, candidates: list[Candidate]) -> None:
        """Time ``candidates`` again beside FP32 and each other, alternating in one session set,
        and replace their speedups: one comparison for all, not one per build moment."""
        from ...benchmark import measure_latency

        stats = measure_latency(
            [self.fp32_path, *[c.path for c in candidates]],
            seconds=2 * self.bench_seconds,  # twice a first timing (1.5 s -> 3 s per model)
            warmup=3,
            min_iterations=20,
        )
        for c, st in zip(candidates, stats[1:], strict=True):
            c.speedup = round(stats[0].median_ms / st.median_ms, 4)
            c.latency_ms = st.median_ms
            c.latency = st
            c.retimed = True
        log.info("re-timed side by side: %s", ", ".join(f"{c.name} {c.speedup:.3f}x" for c in candidates))


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization prints calibration chatter to stdout and warns on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        root.setLevel(level)
