"""Performance prediction before any optimization: what each optim level and structure would
deliver on the deployment target, from one profile of the baseline and a micro-benchmark.

Per-node time, not MACs, drives the model: onnxruntime's per-node profile says where the
baseline spends its time (by op type, with the shapes it actually ran), and a short
micro-benchmark on this CPU measures how much INT8 speeds up each kind of layer at the
model's own shapes (tiny FP32 vs QDQ-INT8 graphs built with ``onnx.helper``, quantized with
the settings the product ships, timed alternately in one process and one thread, with the
cache evicted before each run when the model's weights exceed it) and how each layer's time
scales when channels are removed (the same graphs at two widths: small kernels keep a fixed
cost). Unstructured sparsity counts x1.0: onnxruntime runs sparse weights dense.

The result is a :class:`Prediction`: per (optim level, structure) point a latency, a speedup
and an interval from the spread of the measurements (repeats and layers), with the
assumptions written out. ``sparsifyctl predict`` and the dashboard both call :func:`predict`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .cpu_features import int8_saturates
from .errors import InputError
from .quant_format import onnxruntime_quant_format, resolve_quant_format
from .spec import DeployTarget

DEFAULT_LEVELS = (0.0, 0.2, 0.5, 0.8, 1.0)
STRUCTURES = ("unstructured", "channels")
Kind = Literal["conv", "conv1x1", "depthwise", "gemm", "matmul", "other"]
WEIGHT_KINDS = ("conv", "conv1x1", "depthwise", "gemm", "matmul")
KIND_LABELS = {
    "conv": "Conv kxk",
    "conv1x1": "Conv 1x1",
    "depthwise": "depthwise Conv",
    "gemm": "Gemm",
    "matmul": "MatMul",
    "other": "other ops",
}
# onnxruntime's fused kernels -> the op they compute
_FUSED = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul", "NhwcFusedConv": "Conv"}
_CHAIN_DEPTH = 4  # layers per micro-benchmark graph: amortizes the Q at its input and DQ at its output
_REDUCED_WIDTH = 0.5  # channels kept in the second micro-benchmark width


# ---- contracts -------------------------------------------------------------------------
class NodeTiming(BaseModel):
    """One node of the baseline as onnxruntime ran it (after its graph optimizations)."""

    name: str
    op_type: str = Field(
        description="onnxruntime's kernel, fused kernels mapped to their op (FusedConv -> Conv)"
    )
    kind: Kind
    time_ms: float = Field(description="median kernel time per run")
    share: float = Field(description="fraction of the profiled node time")
    macs: int | None = Field(None, description="multiply-accumulates per run (whole batch)")
    input_shape: list[int] = Field(default_factory=list)
    weight_shape: list[int] = Field(default_factory=list)
    output_shape: list[int] = Field(default_factory=list)


class NodeProfile(BaseModel):
    """The baseline's per-node profile on the deployment target."""

    model: str
    provider: str
    batch_size: int
    runs: int = Field(description="profiled runs (after one warm-up run)")
    latency_ms: float = Field(description="mean wall time per run of a plain (unprofiled) session")
    latency_std_ms: float
    iterations: int = Field(description="timed runs of the plain session")
    node_ms: float = Field(description="sum of the nodes' median kernel times")
    overhead_ms: float = Field(description="wall time outside kernels (session, copies); assumed fixed")
    macs: int | None = Field(None, description="MACs per sample counted from the ONNX graph (modelstats)")
    weight_bytes: int = Field(
        0, description="bytes of the FP32 weights (initializers) the model streams per run"
    )
    nodes: list[NodeTiming]

    def by_kind(self) -> dict[str, float]:
        """Time share of each layer kind."""
        out: dict[str, float] = {}
        for n in self.nodes:
            out[n.kind] = out.get(n.kind, 0.0) + n.share
        return out


class LayerBench(BaseModel):
    """One micro-benchmarked layer shape: FP32 vs INT8 at full and reduced width."""

    kind: Kind
    shape: str
    macs: int
    fp32_ms: float
    int8_factor: float = Field(description="FP32 time / INT8 time (median of the per-round ratios)")
    int8_low: float
    int8_high: float
    fp32_floor: float = Field(description="share of FP32 time that does not shrink with MACs")
    int8_floor: float
    rounds: int = Field(description="timing rounds (each runs all four graphs once)")


class OpFactor(BaseModel):
    """INT8 speed factor and channel-scaling floor of one layer kind (over its sampled layers)."""

    kind: Kind
    factor: float
    low: float
    high: float
    fp32_floor: float
    int8_floor: float
    layers: int = Field(description="distinct layer shapes micro-benchmarked")


class KindShare(BaseModel):
    kind: Kind
    label: str
    nodes: int
    time_ms: float
    share: float
    macs: int | None
    int8_factor: float | None = None
    int8_low: float | None = None
    int8_high: float | None = None


class PredictionPoint(BaseModel):
    optim_level: float
    structure: Literal["unstructured", "channels"]
    int8: bool
    sparsity: float = Field(description="unstructured weight sparsity the product targets (one-shot)")
    macs_reduction: float = Field(description="fraction of MACs removed by channel pruning")
    predicted_latency_ms: float
    predicted_speedup: float
    speedup_without_int8: float = Field(
        description="the pruning alone (what ships when the INT8 search keeps FP32 for accuracy)"
    )
    low: float = Field(description="lower end of the speedup interval")
    high: float = Field(description="upper end of the speedup interval")
    pathways: list[str] = Field(description="experiment types that deliver this point today")
    assumptions: str


class Prediction(BaseModel):
    """Predicted latency and speedup per optim level and structure, before any optimization."""

    model: str
    deploy: DeployTarget
    onnxruntime: str
    cpu_vnni: bool | None = Field(None, description="AVX-VNNI / AVX512-VNNI present (u8s8 does not saturate)")
    int8_settings: dict[str, Any]
    micro_benchmark_s: float
    cold_weights: bool = Field(
        False, description="micro-benchmark run with the cache evicted (weights > LLC)"
    )
    baseline_latency_ms: float
    baseline_latency_std_ms: float
    macs: int | None
    kinds: list[KindShare]
    factors: dict[str, OpFactor]
    layers: list[LayerBench]
    points: list[PredictionPoint]
    notes: list[str] = Field(default_factory=list)

    def point(self, optim_level: float, structure: str = "unstructured") -> PredictionPoint:
        for p in self.points:
            if math.isclose(p.optim_level, optim_level) and p.structure == structure:
                return p
        raise KeyError(f"no prediction for optim level {optim_level} / {structure}")

    def rows(self) -> list[dict[str, str]]:
        """One flat, display-ready row per point (tables in the CLI and the dashboard)."""
        return [
            {
                "level": f"{p.optim_level:g}",
                "structure": p.structure,
                "INT8": "yes" if p.int8 else "no",
                "pruning": (
                    f"{p.macs_reduction:.0%} MACs"
                    if p.structure == "channels"
                    else f"{p.sparsity:.0%} sparse"
                ),
                "latency ms": f"{p.predicted_latency_ms:.3f}",
                "speedup": f"{p.predicted_speedup:.2f}x",
                "interval": f"{p.low:.2f}-{p.high:.2f}x",
                "without INT8": f"{p.speedup_without_int8:.2f}x",
                "pathways": ", ".join(p.pathways),
            }
            for p in self.points
        ]


# ---- profile ---------------------------------------------------------------------------
def _kind(op_type: str, input_shape: list[int], weight_shape: list[int]) -> Kind:
    if op_type == "Conv":
        if len(weight_shape) >= 3 and len(input_shape) >= 2:
            groups = max(1, input_shape[1] // max(1, weight_shape[1]))
            if groups > 1 and weight_shape[1] == 1:
                return "depthwise"
            if all(k == 1 for k in weight_shape[2:]):
                return "conv1x1"
        return "conv"
    if op_type == "Gemm":
        return "gemm"
    if op_type == "MatMul":
        return "matmul" if weight_shape else "other"
    return "other"


def _shapes(arg: Any) -> list[list[int]]:
    shapes = []
    for entry in arg or []:
        dims = next(iter(entry.values()), []) if isinstance(entry, dict) and entry else []
        shapes.append([int(d) for d in dims])
    return shapes


def _macs(kind: str, inp: list[int], weight: list[int], out: list[int]) -> int | None:
    if not out:
        return None
    if kind in ("conv", "conv1x1", "depthwise") and len(weight) >= 3:
        return int(math.prod(out)) * int(math.prod(weight[1:]))
    if kind in ("gemm", "matmul") and inp:
        return int(math.prod(out)) * int(inp[-1])
    return None


def parse_profile(events: list[dict[str, Any]], *, skip_runs: int = 1) -> tuple[list[NodeTiming], int, float]:
    """Per-node median kernel times from an onnxruntime profile (the JSON trace it writes with
    ``SessionOptions.enable_profiling``). The first ``skip_runs`` runs (warm-up) are dropped.
    Returns the nodes in execution order, the number of runs kept, and the median share of a
    run's wall time spent outside kernels (session overhead, copies, thread hand-offs)."""
    run_events = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    runs = [e["ts"] for e in run_events]
    threshold = runs[skip_runs] if len(runs) > skip_runs else None
    kernel_in_run = [0.0] * len(run_events)
    times: dict[tuple[str, int], list[float]] = {}
    meta: dict[tuple[str, int], dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if threshold is not None and e["ts"] < threshold:
            continue
        args = e.get("args", {})
        key = (e["name"].removesuffix("_kernel_time"), int(args.get("node_index", -1)))
        times.setdefault(key, []).append(float(e.get("dur", 0.0)) / 1000.0)
        meta.setdefault(key, args)
        for i, run in enumerate(run_events):
            if run["ts"] <= e["ts"] <= run["ts"] + run.get("dur", 0):
                kernel_in_run[i] += float(e.get("dur", 0.0))
                break
    if not times:
        raise InputError("the onnxruntime profile holds no node timings; is this a profile of a model run?")
    nodes = []
    for key, durs in times.items():
        args = meta[key]
        op = _FUSED.get(args.get("op_name", ""), args.get("op_name", "unknown"))
        ins, outs = _shapes(args.get("input_type_shape")), _shapes(args.get("output_type_shape"))
        inp = ins[0] if ins else []
        out = outs[0] if outs else []
        weight = ins[1] if op == "Conv" and len(ins) > 1 else []
        if op == "Gemm" and len(ins) > 1 and len(ins[1]) == 2:
            weight = ins[1]
        if op == "MatMul" and len(ins) == 1 and inp and out:
            # a constant weight is pre-packed by onnxruntime and no longer listed as an input;
            # a MatMul of two activations (attention) lists both and is not a weight layer
            weight = [inp[-1], out[-1]]
        kind = _kind(op, inp, weight)
        durs = sorted(durs)
        nodes.append(
            NodeTiming(
                name=key[0],
                op_type=op,
                kind=kind,
                time_ms=durs[len(durs) // 2],
                share=0.0,
                macs=_macs(kind, inp, weight, out),
                input_shape=inp,
                weight_shape=weight,
                output_shape=out,
            )
        )
    total = sum(n.time_ms for n in nodes) or 1.0
    for n in nodes:
        n.share = round(n.time_ms / total, 6)
    kept = len(runs) - skip_runs if threshold is not None else max(len(v) for v in times.values())
    first = skip_runs if threshold is not None else 0
    outside = sorted(
        max(0.0, 1.0 - k / run["dur"])
        for run, k in zip(run_events[first:], kernel_in_run[first:], strict=True)
        if run.get("dur")
    )
    overhead = outside[len(outside) // 2] if outside else 0.0
    return nodes, kept, overhead


def _check_model(path: Path):
    """The FP32 ONNX model at ``path``, or InputError (one line) naming what is wrong."""
    from .onnx_model import load_onnx

    model = load_onnx(path, flag="")
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i > 0 and not (d.HasField("dim_value") and d.dim_value > 0):
                raise InputError(
                    f"model '{path}' input '{vi.name}' has a dynamic dimension {i}; predict needs static "
                    "shapes apart from the batch dimension (re-export with fixed dimensions)"
                )
    if any(
        n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger")
        for n in model.graph.node
    ):
        raise InputError(
            f"model '{path}' is already quantized (INT8 nodes); predict the FP32 baseline instead"
        )
    return model


def _session(path: Path, device: str, *, profile_dir: Path | None = None, threads: int = 0):
    import onnxruntime as ort

    from .evaluate import providers

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / "profile")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"model '{path}' cannot be loaded by onnxruntime: {first}") from None


def profile_model(
    path: Path | str, deploy: DeployTarget | None = None, *, runs: int = 10, seconds: float = 1.0
) -> NodeProfile:
    """Profile the baseline once on the target runtime: per-node time, op type, shapes and MACs
    (onnxruntime per-node profiling), plus its plain wall-clock latency over ``seconds``."""
    import json

    import numpy as np

    from .benchmark import _feed_for, with_batch_size
    from .modelstats import count_macs

    deploy = deploy or DeployTarget()
    path = Path(path)
    model = _check_model(path)
    with tempfile.TemporaryDirectory(prefix="sparsify-predict-") as tmp:
        work = Path(tmp)
        sized = with_batch_size(path, deploy.batch_size, work)
        plain = _session(sized, deploy.device)
        feed = _feed_for(plain, deploy.batch_size)
        try:
            plain.run(None, feed)
        except Exception as err:
            raise InputError(
                f"model '{path}' does not run at batch size {deploy.batch_size} on onnxruntime "
                f"({type(err).__name__}); pass --deploy-batch-size matching the model"
            ) from None
        provider = plain.get_providers()[0]
        times = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 5:
            t0 = time.perf_counter()
            plain.run(None, feed)
            times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1000.0
        prof = _session(sized, deploy.device, profile_dir=work)
        for _ in range(max(1, runs) + 1):
            prof.run(None, feed)
        trace = Path(prof.end_profiling())
        events = json.loads(trace.read_text(encoding="utf-8"))
        nodes, kept, outside = parse_profile(events, skip_runs=1)
        macs = count_macs(model)
    # The plain session's latency split as the profile splits a run: kernels in proportion to
    # their median times, the rest (outside kernels) fixed. Shares, not absolute profiled times,
    # carry over, so load from other processes that differs between the two measurements cancels.
    latency = float(ms.mean())
    node_ms = latency * (1.0 - outside)
    total = sum(n.time_ms for n in nodes) or 1.0
    for n in nodes:
        n.time_ms = n.time_ms / total * node_ms
    return NodeProfile(
        model=str(path),
        provider=provider,
        batch_size=deploy.batch_size,
        runs=kept,
        latency_ms=round(latency, 5),
        latency_std_ms=round(float(ms.std()), 5),
        iterations=len(ms),
        node_ms=round(node_ms, 5),
        overhead_ms=round(latency - node_ms, 5),
        macs=macs,
        weight_bytes=sum(
            int(np.prod(t.dims)) * 4
            for t in model.graph.initializer
            if t.data_type == 1  # FLOAT
        ),
        nodes=nodes,
    )


# ---- micro-benchmark -------------------------------------------------------------------
def int8_settings(deploy: DeployTarget) -> dict[str, Any]:
    """The settings the product's INT8 search starts from (modifiers/int8/): static,
    per-channel s8 weights, u8 activations, MinMax calibration; 7-bit weights (reduce_range)
    where the target's u8s8 kernels saturate (``cpu_features.int8_saturates``, the product's fix)."""
    return {
        "format": resolve_quant_format(deploy),
        "activations": "u8",
        "weights": "s8",
        "per_channel": True,
        "reduce_range": int8_saturates(deploy.device),
        "calibration": "minmax",
    }


def _last_level_cache_bytes() -> int | None:
    """Size of the CPU's last-level cache (Linux sysfs), None when unknown."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text(encoding="utf-8").strip().upper()
        unit = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


def _layer_spec(node: NodeTiming) -> dict[str, int] | None:
    """The shape parameters of a micro-benchmark graph for this node (stride 1 at its output size)."""
    inp, w, out = node.input_shape, node.weight_shape, node.output_shape
    if node.kind in ("conv", "conv1x1", "depthwise"):
        if len(w) != 4 or len(inp) != 4 or len(out) != 4:
            return None
        return {
            "batch": out[0],
            "cin": inp[1],
            "cout": out[1],
            "kh": w[2],
            "kw": w[3],
            "groups": max(1, inp[1] // max(1, w[1])),
            "h": out[2],
            "w": out[3],
        }
    if node.kind in ("gemm", "matmul"):
        if not inp or not out:
            return None
        return {"m": int(math.prod(inp[:-1])) or 1, "k": inp[-1], "n": out[-1]}
    return None


def _shape_text(kind: str, s: dict[str, int]) -> str:
    if kind in ("gemm", "matmul"):
        return f"{s['m']}x{s['k']} @ {s['k']}x{s['n']}"
    g = f" g{s['groups']}" if s["groups"] > 1 else ""
    return f"{s['cin']}->{s['cout']} {s['kh']}x{s['kw']}{g} @ {s['batch']}x{s['h']}x{s['w']}"


def _scaled(kind: str, s: dict[str, int], width: float) -> dict[str, int]:
    if width == 1.0:
        return dict(s)
    s = dict(s)

    def shrink(c: int, multiple: int = 1) -> int:
        return max(multiple, int(round(c * width / multiple)) * multiple)

    if kind == "depthwise":
        s["cin"] = s["cout"] = s["groups"] = shrink(s["cin"])
    elif kind in ("conv", "conv1x1"):
        g = s["groups"]
        s["cin"], s["cout"] = shrink(s["cin"], g), shrink(s["cout"], g)
    else:
        s["k"], s["n"] = shrink(s["k"]), shrink(s["n"])
    return s


def _spec_macs(kind: str, s: dict[str, int]) -> int:
    if kind in ("gemm", "matmul"):
        return s["m"] * s["k"] * s["n"]
    return s["batch"] * s["h"] * s["w"] * s["cout"] * (s["cin"] // s["groups"]) * s["kh"] * s["kw"]


def _chain(kind: str, s: dict[str, int], seed: int = 0):
    """An FP32 graph of ``_CHAIN_DEPTH`` layers of this shape, alternating in/out widths, each
    followed by Relu (the product's models fuse activations into their convs too)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if kind in ("gemm", "matmul"):
        dims = [s["k"], s["n"]]
        x_shape = [s["m"], s["k"]]
    else:
        dims = [s["cin"], s["cout"]] if kind != "depthwise" else [s["cin"], s["cin"]]
        x_shape = [s["batch"], s["cin"], s["h"], s["w"]]
    cur = "x"
    for i in range(_CHAIN_DEPTH):
        cin, cout = dims[i % 2], dims[(i + 1) % 2]
        w_name, b_name, y = f"w{i}", f"b{i}", f"y{i}"
        if kind in ("gemm", "matmul"):
            w = rng.standard_normal((cout, cin) if kind == "gemm" else (cin, cout)) / math.sqrt(cin)
            b = rng.standard_normal(cout) * 0.1
            if kind == "gemm":
                nodes.append(helper.make_node("Gemm", [cur, w_name, b_name], [f"z{i}"], transB=1))
            else:
                nodes.append(helper.make_node("MatMul", [cur, w_name], [f"m{i}"]))
                nodes.append(helper.make_node("Add", [f"m{i}", b_name], [f"z{i}"]))
        else:
            g = s["groups"] if kind != "depthwise" else cin
            kh, kw = s["kh"], s["kw"]
            w = rng.standard_normal((cout, cin // g, kh, kw)) / math.sqrt(cin // g * kh * kw)
            b = rng.standard_normal(cout) * 0.1
            pads = [(kh - 1) // 2, (kw - 1) // 2, kh - 1 - (kh - 1) // 2, kw - 1 - (kw - 1) // 2]
            nodes.append(
                helper.make_node(
                    "Conv", [cur, w_name, b_name], [f"z{i}"], kernel_shape=[kh, kw], pads=pads, group=g
                )
            )
        inits += [
            numpy_helper.from_array(w.astype(np.float32), w_name),
            numpy_helper.from_array(b.astype(np.float32), b_name),
        ]
        nodes.append(helper.make_node("Relu", [f"z{i}"], [y]))
        cur = y
    out_shape = list(x_shape)
    graph = helper.make_graph(
        nodes,
        f"micro-{kind}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, x_shape


class _Calib:
    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _quantize(fp32: Path, out: Path, x_shape: list[int], settings: dict[str, Any]) -> None:
    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static

    from .modifiers.int8.candidates import quiet_quantizer

    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal(x_shape).astype(np.float32)} for _ in range(4)]
    with quiet_quantizer():
        quantize_static(
            str(fp32),
            str(out),
            _Calib(feeds),
            quant_format=onnxruntime_quant_format(settings["format"]),
            per_channel=True,
            reduce_range=bool(settings["reduce_range"]),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMovingAverage": False},
        )


def _time_alternating(
    sessions: list,
    feeds: list,
    seconds: float,
    min_rounds: int = 10,
    burst_ms: float = 5.0,
    flush: Any = None,
) -> list[list[float]]:
    """Per session, the mean time (ms) of one run in each round. Each round runs every session
    once or a few times in a row (a burst of about ``burst_ms``, so sub-millisecond graphs are not
    timed at the clock's and the scheduler's granularity); the sessions alternate, order flipped
    every round, so drift and other processes' load hit them all alike. ``flush``: an array
    larger than the last-level cache, written before every burst, so weights start in memory
    as they do in a model whose weights do not fit in the cache."""
    bursts = []
    for sess, feed in zip(sessions, feeds, strict=True):
        sess.run(None, feed)
        t0 = time.perf_counter()
        sess.run(None, feed)
        once_ms = (time.perf_counter() - t0) * 1000.0
        bursts.append(max(1, min(50, int(burst_ms / max(once_ms, 1e-3)))))
    times: list[list[float]] = [[] for _ in sessions]
    started = time.perf_counter()
    rounds = 0
    while time.perf_counter() - started < seconds or rounds < min_rounds:
        order = range(len(sessions)) if rounds % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            if flush is not None:
                flush += 1.0
            t0 = time.perf_counter()
            for _ in range(bursts[i]):
                sessions[i].run(None, feeds[i])
            times[i].append((time.perf_counter() - t0) * 1000.0 / bursts[i])
        rounds += 1
    return times


def _ratio_stats(num: list[float], den: list[float], blocks: int = 5) -> tuple[float, float, float]:
    """Median of the per-round ratios (runs next to each other in time, so a burst of load from
    another process rarely hits one side only) and the lowest / highest median of ``blocks``
    consecutive blocks of rounds: the spread a repeat of the measurement would show."""
    import numpy as np

    ratios = np.asarray(num) / np.asarray(den)
    size = max(1, len(ratios) // blocks)
    per_block = [
        float(np.median(ratios[i : i + size]))
        for i in range(0, size * blocks, size)
        if ratios[i : i + size].size
    ]
    return float(np.median(ratios)), min(per_block), max(per_block)


def _floor(full: float, reduced: float, kept: float) -> float:
    """Share of a layer's time that does not shrink with its MACs: t(q) = f + (1 - f) q, fitted
    through the full width (q = 1) and the reduced one (q = kept)."""
    if full <= 0 or kept >= 1.0:
        return 0.0
    return min(1.0, max(0.0, (reduced / full - kept) / (1.0 - kept)))


def _bench_layer(
    kind: str,
    spec: dict[str, int],
    deploy: DeployTarget,
    settings: dict,
    seconds: float,
    work: Path,
    index: int,
    flush: Any = None,
) -> LayerBench:
    import numpy as np
    import onnx

    paths, feeds = [], []
    red = _scaled(kind, spec, _REDUCED_WIDTH)
    for tag, s in (("full", spec), ("reduced", red)):
        model, x_shape = _chain(kind, s, seed=index)
        fp32 = work / f"layer{index}-{tag}-fp32.onnx"
        int8 = work / f"layer{index}-{tag}-int8.onnx"
        onnx.save(model, str(fp32))
        _quantize(fp32, int8, x_shape, settings)
        x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
        paths += [fp32, int8]
        feeds += [{"x": x}, {"x": x}]
    # One thread: the kernels' own speed ratio. A thread pool's runs stall whenever another
    # process takes one of its cores, which on a shared machine swamps the FP32 / INT8 ratio.
    sessions = [_session(p, deploy.device, threads=1) for p in paths]
    times = _time_alternating(sessions, feeds, seconds, flush=flush)
    factor, low, high = _ratio_stats(times[0], times[1])
    med = [float(np.median(t)) for t in times]
    kept = _spec_macs(kind, red) / _spec_macs(kind, spec)
    return LayerBench(
        kind=kind,
        shape=_shape_text(kind, spec),
        macs=_spec_macs(kind, spec),
        fp32_ms=round(med[0] / _CHAIN_DEPTH, 5),
        int8_factor=round(factor, 4),
        int8_low=round(min(low, factor), 4),
        int8_high=round(max(high, factor), 4),
        fp32_floor=round(_floor(med[0], med[2], kept), 4),
        int8_floor=round(_floor(med[1], med[3], kept), 4),
        rounds=len(times[0]),
    )


def _representatives(nodes: Iterable[NodeTiming], per_kind: int) -> dict[str, list[tuple[dict, float]]]:
    """Per weight kind, the distinct layer shapes that take the most time (at most ``per_kind``)."""
    pooled: dict[str, dict[tuple, list]] = {}
    for n in nodes:
        spec = _layer_spec(n) if n.kind in WEIGHT_KINDS else None
        if spec is None:
            continue
        entry = pooled.setdefault(n.kind, {}).setdefault(tuple(sorted(spec.items())), [spec, 0.0])
        entry[1] += n.time_ms
    return {
        kind: sorted(((s, t) for s, t in shapes.values()), key=lambda x: -x[1])[:per_kind]
        for kind, shapes in pooled.items()
    }


def int8_factors(
    nodes: Sequence[NodeTiming],
    deploy: DeployTarget | None = None,
    seconds: float = 6.0,
    *,
    layers_per_kind: int = 3,
    cold_weights: bool = False,
) -> tuple[dict[str, OpFactor], list[LayerBench]]:
    """INT8 speed factor (FP32 / INT8 time) and channel-scaling floors per layer kind, measured
    on this machine on tiny graphs at the shapes of the model's most time-consuming layers.
    ``seconds`` is the total timing budget, shared by the layers. Returns the per-kind summary
    (factor, low and high are time-weighted means over the sampled layers of each layer's
    median ratio and its lowest / highest block median) and the per-layer measurements.
    ``cold_weights``: evict the cache before every timed burst, for models whose weights do not
    fit in the last-level cache (a 4-layer graph's weights would, and INT8's 4x smaller ones
    all the more, which overstates INT8 on the large layers)."""
    import numpy as np

    deploy = deploy or DeployTarget()
    settings = int8_settings(deploy)
    reps = _representatives(nodes, layers_per_kind)
    count = sum(len(v) for v in reps.values())
    factors: dict[str, OpFactor] = {}
    layers: list[LayerBench] = []
    if not count:
        return factors, layers
    llc = _last_level_cache_bytes() or 32 * 1024**2
    flush = np.zeros(2 * llc // 4, dtype=np.float32) if cold_weights else None
    with tempfile.TemporaryDirectory(prefix="sparsify-micro-") as tmp:
        index = 0
        for kind, shapes in reps.items():
            done = []
            for spec, weight in shapes:
                bench = _bench_layer(kind, spec, deploy, settings, seconds / count, Path(tmp), index, flush)
                index += 1
                done.append((bench, weight))
                layers.append(bench)
            total = sum(w for _, w in done) or 1.0

            def mean(attr: str, items=done, total=total) -> float:
                return sum(getattr(b, attr) * w for b, w in items) / total

            factors[kind] = OpFactor(
                kind=kind,  # type: ignore[arg-type]
                factor=round(mean("int8_factor"), 4),
                low=round(mean("int8_low"), 4),
                high=round(mean("int8_high"), 4),
                fp32_floor=round(mean("fp32_floor"), 4),
                int8_floor=round(mean("int8_floor"), 4),
                layers=len(done),
            )
    return factors, layers


# ---- the model -------------------------------------------------------------------------
def _nearest(node: NodeTiming, layers: list[LayerBench]) -> LayerBench | None:
    same = [b for b in layers if b.kind == node.kind]
    if not same:
        return None
    if node.macs is None:
        return max(same, key=lambda b: b.macs)
    return min(same, key=lambda b: abs(math.log(max(1, b.macs)) - math.log(max(1, node.macs))))


def _node_terms(
    node: NodeTiming, layers: list[LayerBench], factors: dict[str, OpFactor]
) -> tuple[float, float, float, float, float] | None:
    """(factor, low, high, fp32 floor, int8 floor) for a weight node: its own shape's measurement
    when it was micro-benchmarked, else the nearest sampled shape with the kind's full spread."""
    bench = _nearest(node, layers)
    if bench is None:
        return None
    spec = _layer_spec(node)
    if spec is not None and bench.shape == _shape_text(node.kind, spec):
        return bench.int8_factor, bench.int8_low, bench.int8_high, bench.fp32_floor, bench.int8_floor
    kf = factors[node.kind]
    return bench.int8_factor, kf.low, kf.high, bench.fp32_floor, bench.int8_floor


def _predict_time(
    profile: NodeProfile,
    layers: list[LayerBench],
    factors: dict[str, OpFactor],
    *,
    int8: bool,
    kept: float,
    which: int,
) -> float:
    """Predicted latency (ms). ``which``: 0 point estimate, -1 pessimistic, +1 optimistic end of
    every measured factor. Non-weight ops: unchanged by INT8, scaled by the activation volume
    (sqrt of the MACs kept) under channel pruning; session overhead fixed."""
    total = profile.overhead_ms
    for n in profile.nodes:
        terms = _node_terms(n, layers, factors) if n.kind in WEIGHT_KINDS else None
        if terms is None:
            total += n.time_ms * (math.sqrt(kept) if kept < 1.0 else 1.0)
            continue
        f, lo, hi, floor32, floor8 = terms
        factor = {0: f, -1: lo, 1: hi}[which] if int8 else 1.0
        floor = floor8 if int8 else floor32
        if kept < 1.0:
            # the floor is itself measured: pessimistic = more fixed cost (less gain from pruning)
            floor = min(1.0, max(0.0, floor + {0: 0.0, -1: 0.1, 1: -0.1}[which]))
        scale = floor + (1.0 - floor) * kept
        total += n.time_ms * scale / max(factor, 1e-6)
    return total


def _macs_reduction(level: float) -> float:
    """The product's optim level -> MACs removed by channel pruning (the recipes' mapping)."""
    from .recipes import macs_reduction_for_level
    from .spec import ExperimentType

    return macs_reduction_for_level(ExperimentType.one_shot, level)


def _pathways(structure: str, level: float) -> list[str]:
    """Experiment types that deliver the point today (sparse-transfer keeps its base model's shape)."""
    from .recipes import INT8_ONLY_BELOW

    if structure == "channels" and level >= INT8_ONLY_BELOW:
        return ["one-shot", "training-aware"]
    return ["one-shot", "training-aware", "sparse-transfer"]


def _assumptions(
    structure: str,
    level: float,
    int8: bool,
    sparsity: float,
    reduction: float,
    settings: dict,
    int8_wins: bool,
) -> str:
    from .recipes import INT8_ONLY_BELOW

    if level == 0.0:
        return "optim level 0: the baseline is returned unchanged (x1.0)"
    parts = []
    if int8:
        rr = ", 7-bit weights (reduce_range: no VNNI on this CPU)" if settings["reduce_range"] else ""
        parts.append(
            f"INT8 {settings['format'].upper()} (per-channel s8 weights, u8 activations{rr}) on every "
            "Conv/Gemm/MatMul, sped up by the factors measured on this CPU at the model's layer shapes "
            "(single-threaded kernel ratios); other ops unchanged; assumes INT8 passes the fidelity budget "
            "with every node quantized (nodes kept in FP32 lower the gain; when the search keeps the whole "
            "model in FP32, speedup_without_int8 is what ships: predict has no data to tell)"
        )
        if not int8_wins:
            parts.append(
                "INT8 is predicted to be slower than FP32 here, so the product would ship FP32 "
                "(it never returns a slower INT8 model)"
            )
    if structure == "unstructured":
        if sparsity > 0:
            parts.append(
                f"{sparsity:.0%} unstructured sparsity (one-shot; training-aware targets more): x1.0 on "
                "onnxruntime, which runs sparse weights dense; it only shrinks the compressed file"
            )
        elif level < INT8_ONLY_BELOW:
            parts.append(f"below optim level {INT8_ONLY_BELOW}: INT8 only, no pruning")
    else:
        if reduction > 0:
            parts.append(
                f"{reduction:.0%} of MACs removed by channel pruning, assumed spread evenly over the "
                "Conv/Gemm layers; each layer's time scales as floor + (1 - floor) x MACs kept, the floor "
                "measured at two widths (+-0.1 in the interval); other ops scale with the activation size "
                "(sqrt of MACs kept); delivered by one-shot and training-aware --structure channels"
            )
        else:
            parts.append(f"below optim level {INT8_ONLY_BELOW} channel pruning removes nothing: INT8 only")
    return "; ".join(parts)


def _check_args(levels: Sequence[float], structures: Sequence[str], seconds: float) -> None:
    if not levels:
        raise InputError("no optim levels given; pass --levels with numbers in [0, 1], e.g. 0.2,0.5")
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 <= level <= 1.0:
            raise InputError(f"optim level {level!r} is outside [0, 1]; pass --levels with numbers in [0, 1]")
    if not structures:
        raise InputError("no structures given; pass --structures unstructured,channels")
    for s in structures:
        if s not in STRUCTURES:
            raise InputError(f"unknown structure '{s}'; use unstructured or channels")
    if not seconds > 0:
        raise InputError(f"--seconds must be positive, got {seconds}")


def predict(
    path: Path | str,
    deploy: DeployTarget | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    structures: Sequence[str] = STRUCTURES,
    *,
    seconds: float = 6.0,
    layers_per_kind: int = 3,
    profile_runs: int = 10,
) -> Prediction:
    """Predict latency and speedup per optim level and structure (see the module docstring).

    ``seconds`` is the micro-benchmark's timing budget (the baseline is timed for a fifth of
    it, at least 0.2 s). Bad models or arguments raise InputError (one line)."""
    import onnxruntime as ort

    from .recipes import sparsity_for_level
    from .spec import ExperimentType

    _check_args(levels, structures, seconds)
    deploy = deploy or DeployTarget()
    settings = int8_settings(deploy)
    profile = profile_model(path, deploy, runs=profile_runs, seconds=max(0.2, seconds / 5))
    llc = _last_level_cache_bytes()
    cold = llc is not None and profile.weight_bytes > llc
    factors, layers = int8_factors(
        profile.nodes, deploy, seconds, layers_per_kind=layers_per_kind, cold_weights=cold
    )
    base = profile.latency_ms
    notes = []
    if deploy.device == "cuda" and profile.provider != "CUDAExecutionProvider":
        notes.append("CUDA was asked for but onnxruntime has no CUDA provider here: profiled on CPU")
    if cold:
        notes.append(
            f"the model's FP32 weights ({profile.weight_bytes / 2**20:.0f} MiB) exceed the last-level cache "
            f"({llc / 2**20:.0f} MiB): the micro-benchmark starts every run with the cache evicted"
        )
    if "other" in profile.by_kind():
        notes.append(
            f"{profile.by_kind()['other']:.0%} of the node time is in ops INT8 does not target "
            "(counted unchanged by INT8)"
        )
    points = []
    for structure in structures:
        for level in sorted(set(float(x) for x in levels)):
            int8 = level > 0.0
            sparsity = (
                sparsity_for_level(ExperimentType.one_shot, level) if structure == "unstructured" else 0.0
            )
            reduction = _macs_reduction(level) if structure == "channels" else 0.0
            kept = 1.0 - reduction
            if level == 0.0:
                speed, lo, hi, int8_wins, plain = 1.0, 1.0, 1.0, False, 1.0
            else:
                est = {
                    w: _predict_time(profile, layers, factors, int8=True, kept=kept, which=w)
                    for w in (-1, 0, 1)
                }
                fp = {  # unpruned FP32 is the baseline itself (no rounding drift)
                    w: _predict_time(profile, layers, factors, int8=False, kept=kept, which=w)
                    if kept < 1.0
                    else base
                    for w in (-1, 0, 1)
                }
                int8_wins = est[0] < fp[0]
                plain = base / fp[0]
                # the product keeps FP32 when INT8 measures slower
                t = {w: min(est[w], fp[w]) for w in (-1, 0, 1)}
                speed = base / t[0]
                # every time in the model is a share of the baseline's, so the baseline's own
                # timing noise moves the latency, not the speedup: the interval is the factors'
                lo = min(speed, base / t[-1])
                hi = max(speed, base / t[1])
            points.append(
                PredictionPoint(
                    optim_level=level,
                    structure=structure,  # type: ignore[arg-type]
                    int8=int8 and int8_wins,
                    sparsity=sparsity,
                    macs_reduction=round(reduction, 4),
                    predicted_latency_ms=round(base / speed, 5),
                    predicted_speedup=round(speed, 4),
                    speedup_without_int8=round(plain, 4),
                    low=round(min(lo, speed), 4),
                    high=round(max(hi, speed), 4),
                    pathways=_pathways(structure, level),
                    assumptions=_assumptions(
                        structure, level, int8, sparsity, reduction, settings, int8_wins
                    ),
                )
            )
    kinds = []
    shares = profile.by_kind()
    for kind in sorted(shares, key=lambda k: -shares[k]):
        members = [n for n in profile.nodes if n.kind == kind]
        macs = [n.macs for n in members if n.macs is not None]
        f = factors.get(kind)
        kinds.append(
            KindShare(
                kind=kind,  # type: ignore[arg-type]
                label=KIND_LABELS[kind],
                nodes=len(members),
                time_ms=round(sum(n.time_ms for n in members), 5),
                share=round(shares[kind], 4),
                macs=sum(macs) if macs else None,
                int8_factor=f.factor if f else None,
                int8_low=f.low if f else None,
                int8_high=f.high if f else None,
            )
        )
    return Prediction(
        model=str(path),
        deploy=deploy,
        onnxruntime=ort.__version__,
        cpu_vnni=not int8_saturates("cpu"),
        int8_settings=settings,
        micro_benchmark_s=seconds,
        cold_weights=cold,
        baseline_latency_ms=base,
        baseline_latency_std_ms=profile.latency_std_ms,
        macs=profile.macs,
        kinds=kinds,
        factors=factors,
        layers=layers,
        points=points,
        notes=notes,
    )
