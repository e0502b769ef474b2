"""Capture intermediate tensors of an ONNX graph with onnxruntime, segment by segment.

Sequential pruning needs, for every group ("wave") of layers, their inputs as computed by
the model with all earlier layers already pruned (``capture_waves`` yields each wave's
layers with their input statistics: Hessian, cross term, drift, mean). Re-running the whole model once per
wave would cost ``waves x`` a full pass (50+ for ResNet-50). Instead the graph is cut into
segments: segment k holds exactly the not-yet-executed nodes needed to compute wave k's
inputs, starting from a cache of "frontier" tensors (every computed tensor a later node
still consumes, per calibration sample). Each segment is a small sub-model run by its own
onnxruntime session with the *current* (already pruned) initializers, so the whole
sequential pass costs about one forward pass plus one session per wave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from ..kernels.hessian import HessianAccumulator, InputSpec
from .feeds import make_feeds

if TYPE_CHECKING:  # layers imports this module
    from .layers import PrunableLayer

log = logging.getLogger("sparsify.capture")


def _subgraph_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scope."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node_inputs(node))
        defined.update(node.output)
    return used - defined


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus outer-scope names read by control-flow subgraphs."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names.extend(sorted(_subgraph_refs(attr.g)))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                names.extend(sorted(_subgraph_refs(g)))
    return names


def session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def segment_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    """A session for one segment. onnxruntime's graph rewrites can fail on a segment cut from
    a pre-processed transformer graph ("Attempt to replace the existing tensor" while
    initializing); the segment is then run as written, without rewrites (slower, same values)."""
    providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(model_bytes, session_options(threads), providers=providers)
    except Exception as err:  # onnxruntime's pybind errors derive from Exception only
        log.info("segment session without graph optimizations (%s)", str(err).splitlines()[0][:160])
        plain = session_options(threads)
        plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(model_bytes, plain, providers=providers)


class SegmentedRunner:
    """Runs a model piecewise over calibration feeds, keeping only the live frontier."""

    def __init__(
        self,
        model: onnx.ModelProto,
        feeds: list[dict[str, np.ndarray]],
        initializers: dict[str, onnx.TensorProto],
        *,
        threads: int = 2,
    ) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = initializers  # live: pruned weights are swapped in here
        self.threads = threads
        self.nodes = list(self.graph.node)
        self.inputs_of = [node_inputs(n) for n in self.nodes]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for name in self.inputs_of[i]:
                self.consumers.setdefault(name, []).append(i)
        self.input_info = {vi.name: vi for vi in self.graph.input if vi.name not in initializers}
        self.executed: set[int] = set()
        self.cache: list[dict[str, np.ndarray]] = [dict(f) for f in feeds]
        self.sessions_built = 0

    def _segment(self, targets: Iterable[str]) -> list[int]:
        known = self.cache[0].keys() if self.cache else set()
        todo, seen, seg = list(targets), set(), set()
        while todo:
            name = todo.pop()
            if name in seen or name in known or name in self.initializers:
                continue
            seen.add(name)
            idx = self.producer.get(name)
            if idx is None:
                raise ValueError(f"tensor {name!r} has no producer and is not a model input")
            if idx in self.executed or idx in seg:
                if idx in self.executed:
                    raise RuntimeError(f"tensor {name!r} was computed but dropped from the cache")
                continue
            seg.add(idx)
            todo.extend(self.inputs_of[idx])
        return sorted(seg)

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        if name in self.input_info:
            return self.input_info[name]
        arr = self.cache[0][name]
        elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        return helper.make_tensor_value_info(name, elem, list(arr.shape))

    def capture(self, targets: list[str], consume: Callable[[str, np.ndarray], None]) -> None:
        """Compute ``targets`` for every sample, call ``consume(name, array)`` for each, and
        advance the frontier past the executed nodes."""
        seg = self._segment(targets)
        done = self.executed | set(seg)
        produced = [o for i in seg for o in self.nodes[i].output if o]
        seg_inputs = sorted({n for i in seg for n in self.inputs_of[i] if n in self.cache[0]})

        def live(name: str) -> bool:
            return any(c not in done for c in self.consumers.get(name, ()))

        outputs = sorted({o for o in produced if live(o) or o in targets})
        keep_old = [n for n in self.cache[0] if live(n)]
        session = None
        if seg:
            inits = sorted({n for i in seg for n in self.inputs_of[i] if n in self.initializers})
            graph = helper.make_graph(
                [self.nodes[i] for i in seg],
                f"segment_{self.sessions_built}",
                [self._value_info(n) for n in seg_inputs],
                [onnx.ValueInfoProto(name=o) for o in outputs],
                [self.initializers[n] for n in inits],
            )
            sub = helper.make_model(
                graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version
            )
            sub.functions.extend(self.model.functions)
            session = segment_session(sub.SerializeToString(), self.threads)
            self.sessions_built += 1
        for s, values in enumerate(self.cache):
            new = {n: values[n] for n in keep_old}
            if session is not None:
                results = session.run(outputs, {n: values[n] for n in seg_inputs})
                for name, arr in zip(outputs, results, strict=True):
                    if live(name):
                        new[name] = arr
                    if name in targets:
                        consume(name, arr)
            for name in targets:
                if name in values and name not in produced:
                    consume(name, values[name])
            self.cache[s] = new
        self.executed = done


def initializer_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def write_back_initializers(model: onnx.ModelProto, inits: dict[str, onnx.TensorProto]) -> None:
    """Copy the tensors swapped into ``inits`` back into the model, keeping order and names."""
    for i, tensor in enumerate(model.graph.initializer):
        if inits.get(tensor.name) is not tensor:
            model.graph.initializer[i].CopyFrom(inits[tensor.name])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the (float) tensors ``names`` as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


@dataclass
class LayerStatistics:
    """A layer's input statistics from one wave's capture: ``H = 2/n X X^T``, the rows kept,
    the dense cross term and drift (``correct_upstream`` only) and the mean input ``E[x]``."""

    hessian: torch.Tensor
    rows: int
    cross: torch.Tensor | None
    drift: float
    mean: torch.Tensor


def capture_waves(
    model: onnx.ModelProto,
    inits: dict[str, onnx.TensorProto],
    todo: list[PrunableLayer],
    calibration: list[dict[str, np.ndarray]],
    timings: dict[str, float],
    progress,
    task,
    *,
    max_rows: int,
    correct_upstream: bool,
    threads: int,
) -> Iterator[tuple[list[PrunableLayer], dict[tuple[str, InputSpec], LayerStatistics]]]:
    """Wave by wave, the layers of the wave and their input statistics on the calibration set.

    The caller rewrites the wave's weights in ``inits`` before asking for the next wave, so
    every later wave sees the inputs the modified model produces (sequential, as in
    SparseGPT/GPTQ). With ``correct_upstream`` the unmodified model runs alongside for the
    cross term ``X_dense X^T``. Adds ``capture_s`` and ``hessian_s`` to ``timings``."""
    feeds = make_feeds(model, calibration, set(inits))
    runner = SegmentedRunner(model, feeds, inits, threads=threads)
    dense_runner = SegmentedRunner(model, feeds, dict(inits), threads=threads) if correct_upstream else None
    waves = sorted({ly.wave for ly in todo})
    for wave_no, wave in enumerate(waves, 1):
        members = [ly for ly in todo if ly.wave == wave]
        progress.update(task, description=f"wave {wave_no}/{len(waves)}: capturing {len(members)} layer(s)")
        accs: dict[tuple[str, InputSpec], HessianAccumulator] = {}
        by_tensor: dict[str, list[HessianAccumulator]] = {}
        for ly in members:
            key = (ly.data_input, ly.spec)
            if key not in accs:
                accs[key] = HessianAccumulator(
                    ly.spec,
                    len(calibration),
                    max_rows=max_rows,
                    seed=len(accs),
                    rows_scale=0.5 if correct_upstream else 1.0,
                )
                by_tensor.setdefault(ly.data_input, []).append(accs[key])
        hess_time = [0.0]
        dense: dict[str, list[np.ndarray]] = {name: [] for name in by_tensor}
        seen = dict.fromkeys(by_tensor, 0)

        def consume(name: str, arr: np.ndarray, _by=by_tensor, _t=hess_time, _d=dense, _n=seen) -> None:
            t0 = time.perf_counter()
            ref = _d[name][_n[name]] if _d[name] else None
            _n[name] += 1
            for acc in _by.get(name, ()):
                acc.add(arr, ref)
            _t[0] += time.perf_counter() - t0

        t0 = time.perf_counter()
        if dense_runner is not None:
            dense_runner.capture(sorted(by_tensor), lambda n, a, _d=dense: _d[n].append(a))
        runner.capture(sorted(by_tensor), consume)
        dense.clear()
        stats = {
            key: LayerStatistics(acc.finalize(), acc.rows, acc.finalize_cross(), acc.drift(), acc.mean())
            for key, acc in accs.items()
        }
        timings["capture_s"] += time.perf_counter() - t0 - hess_time[0]
        timings["hessian_s"] += hess_time[0]
        progress.update(task, description=f"wave {wave_no}/{len(waves)}")
        yield members, stats
