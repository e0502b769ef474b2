"""Structured one-shot pruning of an ONNX model: whole channels removed, calibrated and compensated.

:func:`prune_channels` is the pipeline: groups (``onnx_graph.channels``) -> per-layer MACs and
onnxruntime node times -> a profiling pass on the dense model (every group's error curve from
``kernels.structured_obs``) -> allocation (least error per millisecond saved until the MAC
target is met) -> the sequential pass (consumers captured with earlier groups already
removed, ``onnx_graph.capture.capture_waves``; optionally re-fitted to the dense model's outputs
first, ``kernels.damped_hessian.correct_to_dense``) -> graph surgery. The selection and the
least-squares compensation themselves are ``kernels.structured_obs``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import InputError
from ..kernels.damped_hessian import correct_to_dense, obs_damp
from ..kernels.structured_obs import (
    ConsumerProblem,
    augmented_hessian,
    select_channels,
    solve_dtype,
)
from ..onnx_graph.capture import capture_waves, initializer_map, write_back_initializers
from ..onnx_graph.channels import (
    ChannelGroup,
    Removal,
    find_groups,
    inferred_shapes,
    node_label,
    own_parameters,
    remove_channels,
)
from ..onnx_graph.layers import PrunableLayer, assign_roles_and_waves, find_layers
from ..progress import layer_progress
from ..report import LayerReport


# ---- latency ----------------------------------------------------------------------------------
def node_times_ms(model: onnx.ModelProto, feed: dict[str, np.ndarray], runs: int = 8, threads: int = 2):
    """Mean onnxruntime kernel time per node name (ms per run), from one profiled session.

    Fused nodes (Conv+activation, NCHWc) keep the Conv's name as a prefix of theirs."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="sparsify-profile-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(2 + runs):
            sess.run(None, feed)
        path = sess.end_profiling()
        with open(path, encoding="utf-8") as fh:
            events = json.load(fh)
    totals: dict[str, list[float]] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        totals.setdefault(ev["name"][: -len("_kernel_time")], []).append(float(ev.get("dur", 0)) / 1e3)
    # the first two runs warm up
    return {k: sum(v[-runs:]) / max(1, min(runs, len(v))) for k, v in totals.items()}


def _match_times(model: onnx.ModelProto, measured: dict[str, float]) -> dict[int, float]:
    """Measured kernel times -> layer node index. onnxruntime renames fused nodes: NCHWc convs
    after the tensor they write (``<tensor>_nchwc``, the activation's output when Conv+Relu
    fused), so a name is resolved to a node, or to a tensor whose producer chain of
    activations leads back to the Conv/Gemm/MatMul that did the work."""
    nodes = list(model.graph.node)
    by_name = {n.name: i for i, n in enumerate(nodes) if n.name}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    out: dict[int, float] = {}
    for key, ms in measured.items():
        base = key[: -len("_nchwc")] if key.endswith("_nchwc") else key
        idx = by_name.get(base, producer.get(base))
        hops = 0
        while idx is not None and nodes[idx].op_type not in ("Conv", "Gemm", "MatMul") and hops < 4:
            if nodes[idx].op_type not in ("Relu", "Clip", "Add", "Sigmoid", "LeakyRelu", "HardSigmoid"):
                idx = None
                break
            idx = producer.get(nodes[idx].input[0])
            hops += 1
        if idx is not None and nodes[idx].op_type in ("Conv", "Gemm", "MatMul"):
            out[idx] = out.get(idx, 0.0) + ms
    return out


# ---- pipeline ---------------------------------------------------------------------------------
@dataclass
class ChannelResult:
    model: onnx.ModelProto
    layers: list[LayerReport]
    macs_before: int
    macs_after: int
    channels_removed: int
    channels_total: int
    groups: int
    notes: list[str] = field(default_factory=list)
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def _layer_macs(model: onnx.ModelProto, layers: list[PrunableLayer]) -> dict[int, int]:
    shapes = inferred_shapes(model)
    out: dict[int, int] = {}
    for ly in layers:
        node = model.graph.node[ly.node_index]
        shp = shapes.get(node.output[0])
        if shp is None:
            continue
        batch = shp[0] if shp else 1
        per = ly.spec.cols
        out[ly.node_index] = int(np.prod(shp)) * per // max(1, batch)
    return out


def _layer_kind(node: onnx.NodeProto, weight_dims: dict[str, list[int]]) -> str:
    """conv / conv1x1 / depthwise / gemm: layers of one kind cost about the same per MAC."""
    if node.op_type != "Conv":
        return "gemm"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if int(attrs.get("group", 1)) > 1:
        return "depthwise"
    kernel = attrs.get("kernel_shape") or weight_dims.get(node.input[1], [0, 0, 0])[2:]
    return "conv1x1" if kernel and all(int(k) == 1 for k in kernel) else "conv"


def per_kind_times(
    model: onnx.ModelProto, macs: dict[int, int], measured: dict[int, float]
) -> dict[int, float]:
    """Each layer's latency as its MACs times the median measured time per MAC of its kind
    (overall median where its kind was never matched). Per-layer kernel times from one short
    profile vary by 10% or more between runs, which moved the channel allocation and so the
    shipped model between two runs of the same inputs (MobileNetV2-MNIST at level 0.5); the
    per-kind medians keep what the latency-aware allocation needs (a depthwise conv costs
    several times a dense conv per MAC) and are stable."""
    nodes = model.graph.node
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    kinds = {i: _layer_kind(nodes[i], dims) for i in macs}
    rates: dict[str, list[float]] = {}
    for i, ms in measured.items():
        if macs.get(i):
            rates.setdefault(kinds[i], []).append(ms / macs[i])
    if not rates:
        return {}
    overall = float(np.median([r for rs in rates.values() for r in rs]))
    kind_rate = {kind: float(np.median(rs)) for kind, rs in rates.items()}
    return {i: m * kind_rate.get(kinds[i], overall) for i, m in macs.items()}


def _grid_step(channels: int, round_to: int) -> int:
    step = round_to if channels % round_to == 0 and channels >= 2 * round_to else 1
    return max(step, math.ceil(channels / 64))


def _ensure_bias(model: onnx.ModelProto, layers: dict[int, PrunableLayer]) -> None:
    """Give every Conv/Gemm consumer a bias initializer (zeros) so the refit can shift it."""
    names = {t.name for t in model.graph.initializer}
    for idx, ly in layers.items():
        node = model.graph.node[idx]
        if ly.op_type not in ("Conv", "Gemm") or (len(node.input) > 2 and node.input[2]):
            continue
        rows = ly.shape[0] if ly.op_type == "Conv" or not ly.transposed else ly.shape[1]
        name = f"{ly.weight_name}__bias"
        while name in names:
            name += "_"
        names.add(name)
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(rows, dtype=ly.dtype), name))
        if len(node.input) == 2:
            node.input.append(name)
        else:
            node.input[2] = name


class _ConsumerState:
    """A consumer's weights as (rows, cols [+ bias]) float64 and its columns already removed."""

    def __init__(self, ly: PrunableLayer, model: onnx.ModelProto, inits: dict) -> None:
        self.layer = ly
        node = model.graph.node[ly.node_index]
        self.bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self.dead = np.zeros(ly.spec.cols, dtype=bool)
        self.inits = inits

    def matrix(self) -> torch.Tensor:
        w = self.layer.to_matrix(numpy_helper.to_array(self.inits[self.layer.weight_name]))[0]
        w = torch.from_numpy(w).to(torch.float64)
        if self.bias_name is None:
            return w
        b = torch.from_numpy(numpy_helper.to_array(self.inits[self.bias_name]).reshape(-1).astype(np.float64))
        return torch.cat([w, b[:, None]], dim=1)

    def store(self, m: torch.Tensor) -> None:
        cols = self.layer.spec.cols
        w = m[:, :cols].to(torch.float32).numpy()[None]
        self.inits[self.layer.weight_name] = numpy_helper.from_array(
            self.layer.from_matrix(w), self.layer.weight_name
        )
        if self.bias_name is not None:
            old = numpy_helper.to_array(self.inits[self.bias_name])
            b = m[:, cols].numpy().astype(old.dtype).reshape(old.shape)
            self.inits[self.bias_name] = numpy_helper.from_array(b, self.bias_name)


def _problem(
    st: _ConsumerState,
    ref,
    channels: int,
    hessian: torch.Tensor,
    mean: torch.Tensor,
    weight: torch.Tensor,
    rows: int = 0,
    percdamp: float = 0.01,
) -> tuple[ConsumerProblem, np.ndarray]:
    """Restrict to the consumer's alive columns (+bias); channel j's columns in that space.

    Fewer calibration rows than columns (a classifier after global pooling sees one row per
    sample) make ``H`` rank-deficient: the refit would fit the calibration set, not the
    data, so the dampening grows with ``cols / rows`` (as for unstructured OBS)."""
    cols = st.layer.spec.cols
    has_bias = st.bias_name is not None
    h = augmented_hessian(hessian, mean) if has_bias else hessian.to(torch.float64)
    alive = np.flatnonzero(~st.dead)
    keep = np.concatenate([alive, [cols]]) if has_bias else alive
    remap = -np.ones(cols + 1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    full = ref.columns(np.arange(channels))
    local = remap[full]
    kt = torch.from_numpy(keep)
    damp = obs_damp(percdamp, len(keep), rows) if rows else None
    prob = ConsumerProblem(
        weight[:, kt].clone(),
        h[kt][:, kt],
        torch.from_numpy(np.maximum(local, 0)),
        damp=damp,
        biased=has_bias,
    )
    return prob, keep


def prune_channels(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    macs_reduction: float,
    *,
    round_to: int = 8,
    max_fraction: float = 0.75,
    percdamp: float = 0.01,
    max_rows: int = 16_384,
    correct_upstream: bool = True,
    profile_latency: bool = True,
    show_progress: bool = False,
    threads: int | None = None,
    profile_cache: dict | None = None,
) -> ChannelResult:
    """Remove whole channels until the MACs of the Conv/Gemm/MatMul layers drop by
    ``macs_reduction`` (as far as removable groups allow), calibrated and compensated.

    ``profile_cache``: a dict shared by calls on the same model and calibration samples (the
    outcome search's several MAC targets): the per-layer latencies and every group's error
    curve depend on neither the target nor the removals, so they are measured once."""
    if not calibration:
        raise InputError("channel pruning needs calibration samples; none were given")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    work = own_parameters(model)
    layers, _ = find_layers(work)
    by_index = {ly.node_index: ly for ly in layers}
    scan = find_groups(work)
    notes: list[str] = []
    groups = [g for g in scan.groups if all(c.node_index in by_index for c in g.consumers)]
    consumer_idx = sorted({c.node_index for g in groups for c in g.consumers})
    _ensure_bias(work, {i: by_index[i] for i in consumer_idx})
    layers, _ = find_layers(work)
    by_index = {ly.node_index: ly for ly in layers}
    scan = find_groups(work)  # again: a consumer given a bias may also be a group's root
    groups = [g for g in scan.groups if all(c.node_index in by_index for c in g.consumers)]
    consumer_idx = sorted({c.node_index for g in groups for c in g.consumers})
    inits = initializer_map(work)
    macs = _layer_macs(work, layers)
    macs_before = sum(macs.values())

    # ---- per-layer latency (measured once), MAC-proportional where a node was not found ----
    key = (round_to, max_fraction, percdamp, max_rows, profile_latency)
    cached = None if profile_cache is None else profile_cache.get(key)
    times: dict[int, float] = {}
    if cached is not None:
        times = dict(cached["times"])
    elif profile_latency:
        from ..onnx_graph.feeds import make_feeds

        t0 = time.perf_counter()
        feed = make_feeds(work, calibration[:1], set(inits))[0]
        matched = _match_times(work, node_times_ms(work, feed, threads=threads or 2))
        timings["latency_layers_matched"] = len([i for i in matched if i in macs])
        times = per_kind_times(work, macs, {i: t for i, t in matched.items() if i in macs})
        timings["latency_profile_s"] = round(time.perf_counter() - t0, 3)
    known = sum(macs[i] for i in times)
    per_mac = (sum(times.values()) / known) if known else 1.0
    for i, m in macs.items():
        times.setdefault(i, m * per_mac)

    # groups whose consumers sit at different depths are left alone (see module docstring)
    assign_roles_and_waves(work, layers, {by_index[i].name for i in consumer_idx})
    usable = []
    for g in groups:
        if len({by_index[c.node_index].wave for c in g.consumers}) == 1:
            usable.append(g)
        else:
            scan.blocked[g.root] = "its consumers sit at different depths of the graph"
    groups = usable
    n_threads = threads or min(2, os.cpu_count() or 1)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        steps = {g.root: _grid_step(g.channels, round_to) for g in groups}
        limit = {
            g.root: min(g.channels - 1, int(g.channels * max_fraction) // steps[g.root] * steps[g.root])
            for g in groups
        }
        if cached is not None:
            curves = cached["curves"]
            scan.blocked.update(cached["blocked"])
            timings["profile_s"] = 0.0
        else:
            blocked_before = dict(scan.blocked)
            curves = _profile(
                work, inits, groups, by_index, calibration, steps, limit, percdamp, max_rows // 2,
                n_threads, show_progress, timings, scan.blocked,
            )  # fmt: skip
            if profile_cache is not None:
                profile_cache[key] = {
                    "times": dict(times),
                    "curves": curves,
                    "blocked": {k: v for k, v in scan.blocked.items() if k not in blocked_before},
                }
        target_macs = macs_before * (1 - macs_reduction)
        plan, reached = allocate_channels(groups, curves, macs, times, target_macs)
        if reached > target_macs * 1.0001:
            notes.append(
                f"channel pruning reached {1 - reached / macs_before:.1%} MAC reduction of the "
                f"{macs_reduction:.0%} asked: the other MACs sit in layers whose channels are coupled "
                "(residual adds, graph outputs) or at the per-group limit"
            )
        removals = _sequential(
            work, inits, groups, by_index, plan, steps, calibration, percdamp, max_rows, correct_upstream,
            n_threads, show_progress, timings,
        )  # fmt: skip
    finally:
        torch.set_num_threads(prev_threads)
    write_back_initializers(work, inits)
    t0 = time.perf_counter()
    pruned = remove_channels(work, removals)
    timings["surgery_s"] = round(time.perf_counter() - t0, 3)
    new_layers, _ = find_layers(pruned)
    macs_after = sum(_layer_macs(pruned, new_layers).values())
    reports, kept = _reports(pruned, groups, removals, scan.blocked, by_index)
    removed = sum(len(r.channels) for r in removals)
    total = sum(g.channels for g in groups)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    return ChannelResult(
        pruned, reports, macs_before, macs_after, removed, total, len(groups), notes, kept, timings
    )


class CostModel:
    """Per-layer cost (MACs or ms) x kept output fraction x kept input fraction, updated
    incrementally as groups lose channels (a layer that is consumer of one group and root
    of another shrinks on both sides, so its MACs fall bilinearly)."""

    def __init__(self, groups: list[ChannelGroup], weights: dict[int, float]) -> None:
        self.groups = {g.root: g for g in groups}
        self.weights = dict(weights)
        self.out_keep = dict.fromkeys(weights, 1.0)
        self.in_removed = dict.fromkeys(weights, 0)
        self.inputs = {c.node_index: c.inputs for g in groups for c in g.consumers}
        self.removed = {g.root: 0 for g in groups}

    def _value(self, i: int, out_keep: float, in_removed: int) -> float:
        inputs = self.inputs.get(i)
        f_in = 1.0 - in_removed / inputs if inputs else 1.0
        return self.weights.get(i, 0.0) * out_keep * f_in

    def total(self) -> float:
        return sum(self._value(i, self.out_keep[i], self.in_removed[i]) for i in self.weights)

    def _changes(self, root: str, n: int) -> list[tuple[int, float, int]]:
        g = self.groups[root]
        d = n - self.removed[root]
        keep = 1.0 - n / g.channels
        ch: dict[int, list] = {}
        for i in [g.root_index, *g.depthwise]:
            if i in self.weights:
                ch[i] = [keep, self.in_removed[i]]
        for c in g.consumers:
            if c.node_index in self.weights:
                cur = ch.get(c.node_index, [self.out_keep[c.node_index], self.in_removed[c.node_index]])
                cur[1] += d * c.block
                ch[c.node_index] = cur
        return [(i, v[0], v[1]) for i, v in ch.items()]

    def saving(self, root: str, n: int) -> float:
        """Cost removed by taking group ``root`` to ``n`` channels removed."""
        return sum(
            self._value(i, self.out_keep[i], self.in_removed[i]) - self._value(i, o, r)
            for i, o, r in self._changes(root, n)
        )

    def apply(self, root: str, n: int) -> None:
        for i, o, r in self._changes(root, n):
            self.out_keep[i], self.in_removed[i] = o, r
        self.removed[root] = n


def allocate_channels(
    groups: list[ChannelGroup],
    curves: dict[str, tuple[list[int], list[float]]],
    macs: dict[int, int],
    times: dict[int, float],
    target_macs: float,
) -> tuple[dict[str, int], float]:
    """Greedy: take the group step with the least added error per ms saved (measured node
    times) until the MACs are under ``target_macs``; returns the plan and the MACs reached."""
    mac_model = CostModel(groups, {i: float(m) for i, m in macs.items()})
    ms_model = CostModel(groups, times)
    pos = {g.root: 0 for g in groups}
    current = mac_model.total()
    while current > target_macs:
        best = None
        for g in groups:
            counts, curve = curves.get(g.root, ([], []))
            k = pos[g.root]
            if k >= len(counts):
                continue
            saved_ms = ms_model.saving(g.root, counts[k])
            d_err = max(curve[k] - (curve[k - 1] if k else 0.0), 0.0)
            score = (d_err + 1e-12) / max(saved_ms, 1e-12)
            if best is None or score < best[0]:
                best = (score, g.root, counts[k])
        if best is None:
            break
        _, root, n = best
        current -= mac_model.saving(root, n)
        mac_model.apply(root, n)
        ms_model.apply(root, n)
        pos[root] += 1
    return dict(mac_model.removed), current


def _stats_key(ly: PrunableLayer):
    return (ly.data_input, ly.spec)


MIN_ROWS_PER_COL = 1  # fewer rows than columns: H is rank-deficient, the refit interpolates


def _profile(
    work,
    inits,
    groups,
    by_index,
    calibration,
    steps,
    limit,
    percdamp,
    max_rows,
    threads,
    show,
    timings,
    skipped,
) -> dict[str, tuple[list[int], list[float]]]:
    """Error curve of every group on the dense model (all consumers captured in one pass)."""
    consumers = sorted({c.node_index for g in groups for c in g.consumers})
    todo = [replace(by_index[i], wave=0) for i in consumers]
    curves: dict[str, tuple[list[int], list[float]]] = {}
    if not todo:
        return curves
    t_cap = {"capture_s": 0.0, "hessian_s": 0.0}
    t0 = time.perf_counter()
    progress, task = layer_progress(show, len(groups), "profiling channels")
    with progress:
        for _, stats in capture_waves(
            work, inits, todo, calibration, t_cap, progress, task,
            max_rows=max_rows, correct_upstream=False, threads=threads,
        ):  # fmt: skip
            for g in groups:
                progress.update(task, description=g.root)
                problems = []
                thin = [
                    (c.name, stats[_stats_key(by_index[c.node_index])].rows, by_index[c.node_index].spec.cols)
                    for c in g.consumers
                    if stats[_stats_key(by_index[c.node_index])].rows
                    < MIN_ROWS_PER_COL * by_index[c.node_index].spec.cols
                ]
                if thin:  # the refit would fit the calibration set: its errors are not to be trusted
                    name, rows, cols = thin[0]
                    skipped[g.root] = (
                        f"too few calibration rows at {name} ({rows} for {cols} columns; "
                        "more calibration samples would let it be pruned)"
                    )
                    progress.advance(task)
                    continue
                for c in g.consumers:
                    ly = by_index[c.node_index]
                    st = _ConsumerState(ly, work, inits)
                    s = stats[_stats_key(ly)]
                    prob, _ = _problem(
                        st, c, g.channels, s.hessian[0], s.mean[0], st.matrix(), s.rows, percdamp
                    )
                    problems.append(prob)
                sel = select_channels(
                    problems, limit[g.root], step=steps[g.root], rounds=1, percdamp=percdamp
                )
                curves[g.root] = (sel.counts, sel.curve)
                progress.advance(task)
            stats.clear()
    timings["profile_s"] = round(time.perf_counter() - t0, 3)
    return curves


def _sequential(
    work, inits, groups, by_index, plan, steps, calibration, percdamp, max_rows, correct_upstream, threads,
    show, timings,
) -> list[Removal]:  # fmt: skip
    """Wave by wave (earlier groups already removed upstream): refit each consumer to the dense
    model's output, then select and compensate the planned channels of its groups."""
    active = [g for g in groups if plan.get(g.root, 0) > 0]
    consumers = sorted({c.node_index for g in active for c in g.consumers})
    layers = list(by_index.values())
    assign_roles_and_waves(work, layers, {by_index[i].name for i in consumers})
    todo = [by_index[i] for i in consumers]
    removals: list[Removal] = []
    if not todo:
        return removals
    states: dict[int, _ConsumerState] = {}
    t_cap = {"capture_s": 0.0, "hessian_s": 0.0}
    t0 = time.perf_counter()
    refits = 0
    progress, task = layer_progress(show, len(active), "removing channels")
    with progress:
        for members, stats in capture_waves(
            work, inits, todo, calibration, t_cap, progress, task,
            max_rows=max_rows, correct_upstream=correct_upstream, threads=threads,
        ):  # fmt: skip
            wave = {ly.node_index for ly in members}
            for idx in sorted(wave):
                ly = by_index[idx]
                st = states[idx] = _ConsumerState(ly, work, inits)
                s = stats[_stats_key(ly)]
                if s.cross is not None and s.rows >= ly.spec.cols and s.drift > 0:
                    has_bias = st.bias_name is not None
                    h = augmented_hessian(s.hessian[0], s.mean[0]) if has_bias else s.hessian[0].double()
                    c = augmented_hessian(s.cross[0], s.mean[0]) if has_bias else s.cross[0].double()
                    st.store(correct_to_dense(st.matrix(), h, c, percdamp, dtype=solve_dtype(h.shape[-1])))
                    refits += 1
            for g in sorted(active, key=lambda g: g.root_index):
                if not all(c.node_index in wave for c in g.consumers):
                    continue
                progress.update(task, description=g.root)
                problems, keeps = [], []
                for c in g.consumers:
                    st = states[c.node_index]
                    s = stats[_stats_key(st.layer)]
                    prob, keep = _problem(
                        st, c, g.channels, s.hessian[0], s.mean[0], st.matrix(), s.rows, percdamp
                    )
                    problems.append(prob)
                    keeps.append(keep)
                sel = select_channels(problems, plan[g.root], step=steps[g.root], rounds=2, percdamp=percdamp)
                chosen = np.array(sorted(sel.order), dtype=np.int64)
                for c, keep, w in zip(g.consumers, keeps, sel.weights, strict=True):
                    st = states[c.node_index]
                    full = st.matrix()
                    full[:, torch.from_numpy(keep)] = w
                    dead_cols = c.columns(chosen).reshape(-1)
                    full[:, torch.from_numpy(dead_cols)] = 0.0
                    st.dead[dead_cols] = True
                    st.store(full)
                removals.append(Removal(g, chosen, sel.curve[-1] if sel.curve else 0.0))
                progress.advance(task)
            stats.clear()
    timings["sequential_s"] = round(time.perf_counter() - t0, 3)
    timings["refits"] = refits
    return removals


def _reports(pruned, groups, removals, blocked, by_index) -> tuple[list[LayerReport], dict]:
    notes: dict[str, list[str]] = {}
    kept: dict[str, tuple[int, int]] = {}
    done = {r.group.root: r for r in removals}
    for g in groups:
        r = done.get(g.root)
        n = len(r.channels) if r is not None else 0
        kept[g.root] = (g.channels - n, g.channels)
        err = f", calibration error {r.error:.4f}" if r is not None else ""
        notes.setdefault(g.root, []).append(f"channels: kept {g.channels - n}/{g.channels} outputs{err}")
        for i in g.depthwise:
            dw_name = node_label(pruned.graph.node[i], i)
            notes.setdefault(dw_name, []).append(
                f"depthwise, follows {g.root}: kept {g.channels - n}/{g.channels}"
            )
        for c in g.consumers:
            if n:
                kept_in = f"inputs from {g.root}: kept {g.channels - n}/{g.channels}"
                notes.setdefault(c.name, []).append(kept_in)
    for root, why in blocked.items():
        notes.setdefault(root, []).append(f"channels kept: {why}")
    reports = []
    inits = initializer_map(pruned)
    for idx, node in enumerate(pruned.graph.node):
        name = node_label(node, idx)
        if name not in notes or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        reports.append(
            LayerReport(
                name=name,
                op_type=node.op_type,
                parameters=int(w.size),
                sparsity=float((w == 0).mean()) if w.size else 0.0,
                note="; ".join(notes[name]),
            )
        )
    return reports, kept
