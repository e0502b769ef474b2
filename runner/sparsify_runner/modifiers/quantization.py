"""Static INT8 post-training quantization with ``onnxruntime.quantization``, chosen by measurement.

A single ``quantize_static`` call is not enough: on depthwise-convolution networks it can
return a model that is both slower and much less faithful than FP32, and which INT8
settings keep accuracy depends on the CPU (AVX2 without VNNI saturates the u8s8 kernels;
VNNI does not). So :func:`quantize_int8` measures on the target runtime, with the
calibration ranges computed once and cached:

1. pre-process (``quant_pre_process``: ORT graph optimizations + shape inference), then
   equalize the channel ranges of every depthwise convolution's input (``onnx_equalize``:
   exact in FP32, so per-tensor INT8 activations no longer starve the small channels);
2. quantize every supported node with a few settings (per-channel weights; u8 or s8
   activations; ``reduce_range`` 7-bit weights, the documented fix for saturation) and
   measure each candidate's fidelity on held-out samples and its latency next to the FP32
   model;
3. if the best settings lose more fidelity than allowed, the same settings with weights
   rounded by GPTQ and bias-corrected (``onnx_gptq``), on the grid ``quantize_static``
   will use, so its rounding keeps them; then, if still needed, rank the nodes by how much
   quantization error each adds (float vs fake-quantized activations of every node output on
   a few calibration samples) and keep the worst ones in FP32 (1, 2, 4, ... nodes, then a
   bisection for the fewest that pass), plus a structural candidate (depthwise convs and the
   first conv in FP32) and a Percentile-calibrated one;
4. pick the fastest candidate within the fidelity budget that is not slower than FP32;
   if none qualifies, hand back the FP32 model and say so in ``notes``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..evaluate import fidelity, fidelity_score, make_session, run_session
from ..onnx_graph.capture import with_outputs
from ..onnx_graph.feeds import batch_size, stack_batches
from ..report import CandidateRecord, Fidelity

log = logging.getLogger("sparsify.quantization")

Sample = dict[str, np.ndarray]
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class QuantizationResult:
    path: Path
    chosen: str
    """Name of the chosen candidate ("fp32" when no INT8 candidate qualified)."""
    candidates: list[CandidateRecord]
    fp32_nodes: list[str]
    """Nodes kept in FP32 in the chosen model (empty when fully quantized)."""
    notes: list[str] = field(default_factory=list)
    quantized: bool = True
    fidelity: Fidelity | None = None
    speedup: float | None = None
    settings: dict = field(default_factory=dict)


@dataclass
class _Candidate:
    name: str
    path: Path
    settings: dict
    exclude: list[str]
    fidelity: Fidelity
    score: float
    speedup: float
    latency_ms: float
    note: str | None = None


class _Reader:
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
        sub = _Reader(self._samples[start_index * b : end_index * b], b)
        self._it = sub._feeds()

    def stride(self, most: int = 8) -> int:
        """The largest number of batches <= ``most`` that divides the batch count."""
        n = len(self)
        return max(d for d in range(1, min(most, n) + 1) if n % d == 0)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return -(-len(self._samples) // self._batch)


def _batch_of(model: onnx.ModelProto) -> int:
    return batch_size(model, {i.name for i in model.graph.initializer})


def _prepare(
    fp32_path: Path, work: Path, notes: list[str], calibration: list[Sample] | None = None
) -> tuple[Path, int]:
    """quant_pre_process + unique node names (nodes_to_exclude works by name) and, given
    ``calibration`` samples, activation-range equalization of the Conv -> depthwise Conv chains
    (``onnx_equalize``). Returns the model to quantize and the number of chains equalized."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx_equalize import equalize_activations

    pre = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
    except Exception as err:  # some graphs defeat shape inference; quantize as is
        notes.append(f"quantization pre-processing skipped ({type(err).__name__})")
        model = onnx.load(str(fp32_path))
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    chains = 0
    if calibration:
        result = equalize_activations(model, _Reader(calibration, _batch_of(model))._feeds())
        model, chains = result.model, result.chains
        if chains:
            notes.append(
                f"INT8: equalized the channel ranges of {chains} conv -> depthwise conv input(s) "
                f"(largest channel scale {result.max_scale:g}; exact in FP32)"
            )
    onnx.save(model, str(pre))
    return pre, chains


def _weight_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    inits = {i.name for i in model.graph.initializer}
    return [
        n for n in model.graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in inits
    ]


def _structural_exclusions(model: onnx.ModelProto) -> list[str]:
    """Depthwise convs and the first conv: the usual INT8 troublemakers on CPUs."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    out = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if convs and convs[0].name not in out:
        out.insert(0, convs[0].name)
    return out


def node_sensitivity(
    float_path: Path, qdq_path: Path, samples: list[Sample], batch: int
) -> list[tuple[str, float]]:
    """Rank nodes by the relative activation error their quantization adds (largest first).

    Every float node output of the FP32 graph is exposed in both models; the QDQ model keeps
    those tensor names (its Q/DQ pairs hang off them), so err(t) = ||q(t) - f(t)|| / ||f(t)||
    and a node's added error is err(output) - max err(inputs)."""
    fmodel = onnx.load(str(float_path))
    qmodel = onnx.load(str(qdq_path))
    inferred = onnx.shape_inference.infer_shapes(fmodel)
    float_tensors = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    q_produced = {o for n in qmodel.graph.node for o in n.output}
    nodes = [n for n in fmodel.graph.node if n.output and n.output[0] in float_tensors]
    tensors = sorted({n.output[0] for n in nodes} & q_produced)
    if not tensors:
        return []
    with tempfile.TemporaryDirectory(prefix="sparsify-sens-") as tmp:
        fa, qa = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(with_outputs(fmodel, tensors), str(fa))
        onnx.save(with_outputs(qmodel, tensors), str(qa))
        fs, qs = make_session(fa), make_session(qa)
        err: dict[str, list[float]] = {t: [] for t in tensors}
        reader = _Reader(samples, batch)
        for feed in reader._feeds():
            fo = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, feed), strict=True))
            qo = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, feed), strict=True))
            for t in tensors:
                f, q = fo[t].astype(np.float64), qo[t].astype(np.float64)
                err[t].append(float(np.linalg.norm(q - f) / (np.linalg.norm(f) + 1e-12)))
    mean = {t: float(np.mean(v)) for t, v in err.items()}
    # The quantizer folds Relu/Clip into the preceding Conv (its output tensor disappears):
    # attribute the activation's error to that Conv, the node nodes_to_exclude acts on.
    producer = {o: n for n in fmodel.graph.node for o in n.output}
    ranked = []
    for n in nodes:
        out = n.output[0]
        if out not in mean:
            continue
        owner = n
        if n.op_type in ("Relu", "Clip") and n.input and n.input[0] in producer:
            prev = producer[n.input[0]]
            if prev.op_type in WEIGHT_OPS and prev.output[0] not in q_produced:
                owner = prev
        upstream = max((mean.get(i, 0.0) for i in owner.input), default=0.0)
        ranked.append((owner.name, mean[out] - upstream))
    ranked.sort(key=lambda x: x[1], reverse=True)
    return ranked


class _Search:
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
    ) -> None:
        from onnxruntime.quantization import QuantFormat

        self.fp32_path, self.pre, self.work = fp32_path, pre, work
        self.calibration, self.holdout = calibration, holdout
        self.batch = _batch_of(onnx.load(str(pre), load_external_data=False))
        self.format = QuantFormat.QOperator if quant_format == "qoperator" else QuantFormat.QDQ
        self.bench_seconds = bench_seconds
        self.bar = bar
        self.reference = run_session(make_session(fp32_path), holdout)
        self.done: list[_Candidate] = []
        self._cache: dict[tuple[str, Path], Path] = {}
        self.longest_build_s = 0.0
        """The slowest candidate so far (quantize + evaluate + time): the next one's estimate."""
        self.calibrated_build_s = 0.0
        """The first candidate, MinMax calibration included: the unit for the costlier steps."""
        self.equalized_chains = equalized_chains
        """Conv -> depthwise Conv chains whose channel ranges ``pre`` has equalized."""
        self.gptq_models: dict[int, Path] = {}
        self.gptq_notes: list[str] = []

    def gptq_model(self, reduce_range: bool) -> Path:
        """The pre-processed model with GPTQ-rounded, bias-corrected weights on the grid that
        ``quantize_static`` uses for these settings (built once per grid)."""
        from .onnx_gptq import gptq_onnx

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
    ) -> _Candidate:
        from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

        from ..benchmark import measure_latency

        exclude = list(exclude or [])
        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
        source = self.gptq_model(reduce_range) if gptq else self.pre
        t0 = time.perf_counter()  # the GPTQ pass above is not a candidate's cost
        cache = self._cache.setdefault(
            (method, source), self.work / f"calibration-{method}-{len(self._cache)}.json"
        )
        reader = None if cache.exists() else _Reader(self.calibration, self.batch)
        extra: dict = {"CalibMovingAverage": False}
        if reader is not None:
            extra["CalibStridedMinMax"] = reader.stride()
        path = self.work / f"candidate-{len(self.done)}.onnx"
        with _quiet():
            quantize_static(
                str(source),
                str(path),
                reader,
                quant_format=self.format,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=methods[method],
                calibration_cache_path=str(cache),
                extra_options=extra,
            )
        outputs = run_session(make_session(path), self.holdout)
        fid = fidelity(self.reference, outputs)
        base, cand = measure_latency(
            [self.fp32_path, path], seconds=self.bench_seconds, warmup=3, min_iterations=5
        )
        c = _Candidate(
            name=name,
            path=path,
            settings={
                "format": self.format.name.lower(),
                "activations": activation,
                "weights": "s8",
                "weight_rounding": "gptq" if gptq else "nearest",
                "per_channel": True,
                "reduce_range": reduce_range,
                "calibration": method,
                "equalized_chains": self.equalized_chains,
                "fp32_nodes": len(exclude),
            },
            exclude=exclude,
            fidelity=fid,
            score=fidelity_score(fid),
            speedup=round(base.mean_ms / cand.mean_ms, 4),
            latency_ms=cand.mean_ms,
            note=note,
        )
        self.done.append(c)
        spent = time.perf_counter() - t0
        self.longest_build_s = max(self.longest_build_s, spent)
        self.calibrated_build_s = self.calibrated_build_s or spent
        self.bar.advance()
        log.info("candidate %s: fidelity %.4f speedup %.3f", name, c.score, c.speedup)
        return c


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization prints calibration chatter to stdout and warns on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        root.setLevel(level)


def allowed_flips(n: int, max_loss: float, alpha: float = 0.2) -> int:
    """Most top-1 disagreements out of ``n`` held-out samples still plausible for a model whose
    true loss is ``max_loss``: the largest k with P(X >= k) >= alpha, X ~ Binomial(n, max_loss).
    With a 1% budget: 0 of 8, 1 of 64, 3 of 200. Demanding zero flips on 64 samples would reject
    a model that really is 99% faithful about half the time (1 - 0.99**64 = 0.47)."""
    if max_loss <= 0.0 or n <= 0:
        return 0
    p = min(max_loss, 1.0)
    tail = 1.0  # P(X >= k), starting at k = 0
    for k in range(n + 1):
        if tail < alpha:
            return k - 1
        tail -= math.comb(n, k) * p**k * (1 - p) ** (n - k)
    return n


def within_budget(fid: Fidelity, min_score: float) -> bool:
    """Top-1 agreement: flips allowed by :func:`allowed_flips`; other outputs: cosine >= min_score."""
    if fid.top1_agreement is None:
        return fid.cosine_similarity >= min_score
    flips = round((1.0 - fid.top1_agreement) * fid.samples)
    return flips <= allowed_flips(fid.samples, 1.0 - min_score)


def _ok(c: _Candidate, min_score: float, min_speedup: float) -> bool:
    return within_budget(c.fidelity, min_score) and c.speedup >= min_speedup


def quantize_int8(
    fp32_path: Path,
    calibration: list[Sample],
    out_path: Path,
    *,
    holdout: list[Sample] | None = None,
    quant_format: str = "qdq",
    max_fidelity_loss: float = 0.01,
    show_progress: bool = False,
    bench_seconds: float = 1.5,
    time_budget_s: float = 420.0,
    sensitivity_samples: int = 8,
    min_speedup: float = 1.0,
    equalize: bool = True,
    reduce_range: bool | None = None,
) -> QuantizationResult:
    """Static INT8 chosen by measurement (see the module docstring).

    Fidelity is measured against ``fp32_path`` on ``holdout`` (the calibration samples when
    none are given, which is optimistic and noted). ``max_fidelity_loss`` bounds the loss of
    top-1 agreement (classifiers) or cosine similarity (other outputs); ``min_speedup`` is the
    speed a candidate needs relative to FP32 (1.0: never slower); ``equalize`` rescales the
    inputs of depthwise convolutions to equal channel ranges first (exact in FP32);
    ``reduce_range`` True/False restricts the search to 7-bit / full 8-bit weights (None
    measures both: a model tuned for one grid by QAT is built on that grid)."""
    from ..progress import bar

    if not calibration:
        raise ValueError("quantize_int8 needs at least one calibration sample")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    notes: list[str] = []
    if not holdout:
        holdout = calibration
        notes.append("INT8 fidelity measured on the calibration samples (no held-out samples given)")
    min_score = 1.0 - max_fidelity_loss
    started = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".quant-", dir=out_path.parent))
    try:
        pre, chains = _prepare(fp32_path, work, notes, calibration if equalize else None)
        with bar("quantize: measure INT8 candidates", None, enabled=show_progress) as b:
            s = _Search(fp32_path, pre, calibration, holdout, work, quant_format, bench_seconds, b, chains)
            chosen = _search(
                s, min_score, min_speedup, started, time_budget_s, sensitivity_samples, notes, reduce_range
            )
        return _finish(s, chosen, fp32_path, out_path, min_score, notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _search(
    s: _Search,
    min_score: float,
    min_speedup: float,
    started: float,
    budget: float,
    sens_samples: int,
    notes: list[str],
    reduce_range: bool | None = None,
) -> _Candidate | None:
    def over_time(expected_s: float | None = None) -> bool:
        """Would a step expected to take ``expected_s`` (default: the slowest candidate so far)
        overrun the budget?"""
        expected = s.longest_build_s if expected_s is None else expected_s
        return time.perf_counter() - started + expected > budget

    # 1. settings, everything quantized
    settings = []
    if reduce_range is not True:
        settings += [s.build("int8-u8s8", activation="u8"), s.build("int8-s8s8", activation="s8")]
    if reduce_range is not False:
        settings.append(
            s.build(
                "int8-u8s8-reduce-range",
                activation="u8",
                reduce_range=True,
                note="7-bit weights: avoids u8s8 saturation on CPUs without VNNI",
            )
        )
    # The rest of the search refines one setting: the most faithful of the fast ones. A setting
    # that runs barely faster than FP32 (s8 activations on some CPUs) is a poor base however
    # faithful, since the pick is the fastest candidate within budget.
    fastest = max(c.speedup for c in settings)
    fast = [c for c in settings if c.speedup >= 0.75 * fastest] or settings
    best = max(fast, key=lambda c: (c.score, c.fidelity.cosine_similarity, c.speedup))
    act, rr = best.settings["activations"], best.settings["reduce_range"]
    tag = best.name.removeprefix("int8-")

    def fast_one_passes() -> bool:
        """A candidate within budget at the fast settings' speed: refining further could only
        trade speed for fidelity. A slow one that passes (s8 activations at 1.1x while u8 runs
        2.3x) does not end the search: a refined fast candidate may pass too."""
        return any(_ok(c, min_score, min_speedup) and c.speedup >= 0.75 * fastest for c in s.done)

    if fast_one_passes():
        return _pick(s, min_score, min_speedup)

    # 1b. the same settings with GPTQ-rounded, bias-corrected weights
    gptq = False
    # measured on ResNet-50 and MobileNetV2: the GPTQ pass costs ~6 first (calibrating) candidates
    if not over_time(7 * s.calibrated_build_s):
        rounded = s.build(
            f"int8-{tag}-gptq",
            activation=act,
            reduce_range=rr,
            gptq=True,
            note="weights rounded by GPTQ with bias correction",
        )
        notes.extend(s.gptq_notes)
        key = (rounded.score, rounded.fidelity.cosine_similarity)
        if key >= (best.score, best.fidelity.cosine_similarity):
            best, gptq, tag = rounded, True, f"{tag}-gptq"
        if _ok(rounded, min_score, min_speedup):
            return _pick(s, min_score, min_speedup)

    # 2. FP32 for the nodes that add the most quantization error
    model = onnx.load(str(s.pre))
    try:
        ranked = node_sensitivity(s.pre, best.path, s.calibration[:sens_samples], s.batch)
    except Exception as err:  # sensitivity is an optimization; fall back to structure only
        notes.append(
            f"per-node sensitivity unavailable ({type(err).__name__}); tried structural fallbacks only"
        )
        ranked = []
    order = [name for name, _ in ranked]
    passing: dict[int, _Candidate] = {}
    failing = 0
    k = 1
    history = [best.fidelity.cosine_similarity]
    limit = max(1, len(_weight_nodes(model)) // 2)
    while order and k <= min(limit, len(order)) and not over_time():
        c = s.build(
            f"int8-{tag}-fp32-top{k}",
            activation=act,
            reduce_range=rr,
            exclude=order[:k],
            gptq=gptq,
            note="FP32 for the nodes adding the most quantization error",
        )
        if within_budget(c.fidelity, min_score):
            passing[k] = c
            break
        failing = k
        history.append(c.fidelity.cosine_similarity)
        # Stop doubling when keeping more nodes in FP32 stopped helping: the error is spread
        # over the activations rather than concentrated in a few nodes.
        if len(history) >= 4 and history[-1] <= history[0] + 0.25 * (1.0 - history[0]):
            notes.append(
                f"keeping up to {k} of the most sensitive nodes in FP32 did not recover fidelity "
                f"(cosine {history[0]:.4f} -> {history[-1]:.4f}); the quantization error is spread out"
            )
            break
        k *= 2
    if passing:  # bisect for the fewest FP32 nodes that still pass (fewer = faster)
        lo, hi = failing, min(passing)
        while hi - lo > 1 and not over_time():
            mid = (lo + hi) // 2
            c = s.build(
                f"int8-{tag}-fp32-top{mid}",
                activation=act,
                reduce_range=rr,
                exclude=order[:mid],
                gptq=gptq,
                note="FP32 for the nodes adding the most quantization error",
            )
            if within_budget(c.fidelity, min_score):
                hi = mid
            else:
                lo = mid

    # 3. structural fallback and another calibration method
    structural = _structural_exclusions(model)
    has_depthwise = len(structural) > 1
    if has_depthwise and not over_time():
        s.build(
            f"int8-{tag}-fp32-depthwise-first",
            activation=act,
            reduce_range=rr,
            exclude=structural,
            gptq=gptq,
            note="depthwise convs and the first conv in FP32",
        )
    # histogram calibration: measured ~6.5x a MinMax-calibrating candidate on ResNet-50
    if not fast_one_passes() and not over_time(7 * s.calibrated_build_s):
        s.build(
            f"int8-{tag}-percentile",
            activation=act,
            reduce_range=rr,
            method="percentile",
            gptq=gptq,
            exclude=passing[min(passing)].exclude if passing else [],
            note="Percentile (99.999%) calibration instead of MinMax",
        )
    if over_time():
        notes.append(f"INT8 candidate search stopped before its time budget ({budget:.0f} s) ran out")
    return _pick(s, min_score, min_speedup)


def _pick(s: _Search, min_score: float, min_speedup: float) -> _Candidate | None:
    ok = [c for c in s.done if _ok(c, min_score, min_speedup)]
    if not ok:
        return None
    return max(ok, key=lambda c: (c.speedup, c.score))


def _finish(
    s: _Search, chosen: _Candidate | None, fp32_path: Path, out_path: Path, min_score: float, notes: list[str]
) -> QuantizationResult:
    records = [
        CandidateRecord(
            name=c.name,
            chosen=c is chosen,
            latency_ms=round(c.latency_ms, 4),
            speedup=c.speedup,
            fidelity=round(c.score, 6),
            cosine=round(c.fidelity.cosine_similarity, 6),
            note="; ".join(
                x for x in (c.note, f"{len(c.exclude)} node(s) in FP32" if c.exclude else None) if x
            )
            or None,
        )
        for c in s.done
    ]
    records.append(
        CandidateRecord(
            name="fp32",
            chosen=chosen is None,
            speedup=1.0,
            fidelity=1.0,
            cosine=1.0,
            note="the input model, unquantized",
        )
    )
    if chosen is None:
        shutil.copyfile(fp32_path, out_path)
        best = max(s.done, key=lambda c: (c.score, c.speedup)) if s.done else None
        fastest = max(s.done, key=lambda c: c.speedup) if s.done else None
        if best is not None and fastest is not None:
            notes.append(
                f"INT8 not applied: no candidate was both within the fidelity budget "
                f"({min_score:.3f}) and not slower than FP32 (most faithful: {best.name} at "
                f"{best.score:.3f}, {best.speedup:.2f}x; fastest: {fastest.name} at {fastest.speedup:.2f}x, "
                f"{fastest.score:.3f}); "
                "the FP32 model is returned"
            )
        return QuantizationResult(
            path=out_path,
            chosen="fp32",
            candidates=records,
            fp32_nodes=[],
            notes=notes,
            quantized=False,
            fidelity=None,
            speedup=1.0,
            settings={"quantized": False},
        )
    shutil.copyfile(chosen.path, out_path)
    if chosen.exclude:
        notes.append(f"INT8 kept {len(chosen.exclude)} node(s) in FP32 to stay within the fidelity budget")
    return QuantizationResult(
        path=out_path,
        chosen=chosen.name,
        candidates=records,
        fp32_nodes=list(chosen.exclude),
        notes=notes,
        quantized=True,
        fidelity=chosen.fidelity,
        speedup=chosen.speedup,
        settings=dict(chosen.settings),
    )
