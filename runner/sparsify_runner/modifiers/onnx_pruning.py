"""One-shot unstructured pruning of an ONNX model: OBS/SparseGPT with calibration, or magnitude.

Pipeline of :func:`prune_onnx`:

1. find prunable layers: ``Conv`` (1-D/2-D, any groups), ``Gemm`` and ``MatMul`` whose
   weight is a float initializer used by that node alone; everything else is reported and
   skipped with the reason (shared weight, weight computed in the graph, ...);
2. give each a role (first / depthwise / classifier / normal) from the graph and allocate
   per-layer sparsity (``allocation``);
3. ``method="obs"``: sort the layers into waves of mutually independent layers (a layer's
   wave = 1 + the latest wave among the pruned layers upstream of its input), then per
   wave capture the layers' inputs on the calibration samples with onnxruntime (with all
   earlier waves already pruned, ``onnx_capture``), build each layer's Hessian
   (``hessian``) and prune + update its weights (``obs``). With ``correct_upstream`` the
   unpruned model runs alongside and each layer first gets least-squares weights that map
   its drifted inputs to the dense model's output (``obs.correct_to_dense``), so pruning
   also undoes the error accumulated upstream; underdetermined layers (fewer calibration
   rows than inputs, e.g. a classifier) only when the drift is large (measured: it fits
   calibration noise otherwise). ``method="magnitude"``
   zeroes the smallest weights with the same allocation;
4. write the weights back (same names, dtypes, inputs and outputs) and check the model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import InputError
from ..report import LayerReport
from .allocation import AllocationPolicy, LayerProfile, allocate, allocate_by_damage
from .hessian import DEFAULT_MAX_ROWS, HessianAccumulator, InputSpec
from .magnitude import magnitude_prune
from .obs import correct_to_dense, relative_output_error, sparsegpt_prune
from .onnx_capture import SegmentedRunner, initializer_map, node_inputs, write_back_initializers

METHODS = ("obs", "magnitude")
ALLOCATIONS = ("erk", "sensitivity")
CORRECTION_MIN_DRIFT = 0.25
_FLOAT_TYPES = (np.float16, np.float32, np.float64)


@dataclass
class PruneResult:
    model: onnx.ModelProto
    layers: list[LayerReport]
    achieved_sparsity: float
    """Zero weights / weights over the prunable layers (protected ones included)."""
    target_sparsity: float = 0.0
    method: str = "obs"
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class PrunableLayer:
    name: str
    op_type: str
    node_index: int
    data_input: str
    weight_name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    spec: InputSpec
    transposed: bool = False  # weight stored (in, out): MatMul, Gemm transB=0
    role: str = "normal"
    wave: int = 0

    @property
    def params(self) -> int:
        return int(np.prod(self.shape))

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """Stored weight -> (groups, rows, cols) float32."""
        w = w.astype(np.float32)
        if self.op_type == "Conv":
            g = self.spec.groups
            return w.reshape(g, self.shape[0] // g, -1)
        return (w.T if self.transposed else w)[None]

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        out = m.reshape(self.shape) if self.op_type == "Conv" else m[0].T if self.transposed else m[0]
        return np.ascontiguousarray(out).astype(self.dtype)


@dataclass
class _Skipped:
    name: str
    op_type: str
    params: int
    sparsity: float
    note: str


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node_inputs(node):
            counts[name] = counts.get(name, 0) + 1
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _conv_spec(node: onnx.NodeProto, shape: tuple[int, ...]) -> InputSpec | str:
    a = _attrs(node)
    nd = len(shape) - 2
    if nd not in (1, 2):
        return f"{nd}-D convolution is not supported"
    groups = int(a.get("group", 1))
    kernel = tuple(int(k) for k in shape[2:])
    strides = tuple(a.get("strides", [1] * nd))
    dil = tuple(a.get("dilations", [1] * nd))
    pads = tuple(a.get("pads", [0] * (2 * nd)))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if nd == 1:
        kernel, strides, dil = (1, kernel[0]), (1, strides[0]), (1, dil[0])
        pads = (0, pads[0], 0, pads[1])
    return InputSpec(
        kind="conv",
        cols=int(np.prod(shape[1:])),
        groups=groups,
        kernel=kernel,  # type: ignore[arg-type]
        stride=strides,  # type: ignore[arg-type]
        dilation=dil,  # type: ignore[arg-type]
        pads=pads,  # type: ignore[arg-type]
        auto_pad=auto_pad,
        conv_1d=nd == 1,
    )


def find_layers(model: onnx.ModelProto) -> tuple[list[PrunableLayer], list[_Skipped]]:
    """Prunable Conv/Gemm/MatMul layers of the main graph, and the ones skipped with why."""
    graph = model.graph
    inits = initializer_map(model)
    uses = _use_counts(graph)
    producers = {o: n for n in graph.node for o in n.output}
    constant = set(inits)  # tensors computed from constants only (e.g. Transpose(initializer))
    for node in graph.node:
        if all(n in constant for n in node_inputs(node)):
            constant.update(o for o in node.output if o)
    layers: list[PrunableLayer] = []
    skipped: list[_Skipped] = []
    for idx, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.input) < 2:
            continue
        wname = node.input[1]
        label = node.name or f"{node.op_type}({wname})"
        if wname not in inits:
            if wname not in constant:
                continue  # activation x activation (attention scores, dynamic weights): not a weight layer
            src = producers.get(wname)
            how = f"computed by a {src.op_type} node" if src is not None else "unknown source"
            skipped.append(
                _Skipped(label, node.op_type, 0, 0.0, f"skipped: weight is not an initializer ({how})")
            )
            continue
        tensor = inits[wname]
        shape = tuple(int(d) for d in tensor.dims)
        params = int(np.prod(shape)) if shape else 1
        arr_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)

        def skip(note: str, *, _l=label, _op=node.op_type, _p=params, _t=tensor) -> None:
            try:
                arr = numpy_helper.to_array(_t)
                sp = float((arr == 0).mean()) if arr.size else 0.0
            except Exception:  # noqa: BLE001 - only for the report
                sp = 0.0
            skipped.append(_Skipped(_l, _op, _p, sp, f"skipped: {note}"))

        if uses.get(wname, 0) > 1:
            skip(f"weight {wname!r} is shared by {uses[wname]} uses")
            continue
        if arr_dtype not in _FLOAT_TYPES:
            skip(f"weight dtype {arr_dtype} is not float")
            continue
        if node.input[0] in inits:
            skip("data input is a constant")
            continue
        a = _attrs(node)
        if node.op_type == "Conv":
            spec = _conv_spec(node, shape)
            if isinstance(spec, str):
                skip(spec)
                continue
            transposed = False
        elif node.op_type == "Gemm":
            if len(shape) != 2:
                skip("Gemm weight is not 2-D")
                continue
            transposed = not bool(a.get("transB", 0))
            k = shape[0] if transposed else shape[1]
            spec = InputSpec(kind="linear", cols=k, trans_a=bool(a.get("transA", 0)))
        else:
            if len(shape) != 2:
                skip(f"MatMul weight has rank {len(shape)} (only 2-D weights are pruned)")
                continue
            transposed = True
            spec = InputSpec(kind="linear", cols=shape[0])
        layers.append(
            PrunableLayer(
                name=label,
                op_type=node.op_type,
                node_index=idx,
                data_input=node.input[0],
                weight_name=wname,
                shape=shape,
                dtype=np.dtype(arr_dtype),
                spec=spec,
                transposed=transposed,
            )
        )
    return layers, skipped


def _is_depthwise(layer: PrunableLayer) -> bool:
    return layer.op_type == "Conv" and layer.spec.groups > 1 and layer.shape[1] == 1


def assign_roles_and_waves(model: onnx.ModelProto, layers: list[PrunableLayer], pruned: set[str]) -> None:
    """Roles from the graph, waves from the dependencies between layers in ``pruned``.

    ``depth[t]`` = number of sequential pruned-layer steps needed to compute tensor t.
    ``upstream[t]`` / reaching the outputs tell first and last (classifier) layers apart.
    """
    graph = model.graph
    by_node = {layer.node_index: layer for layer in layers}
    depth: dict[str, int] = {}
    upstream: dict[str, bool] = {}  # any prunable layer upstream of the tensor
    for idx, node in enumerate(graph.node):
        ins = node_inputs(node)
        layer = by_node.get(idx)
        if layer is not None:
            data = layer.data_input
            layer.wave = depth.get(data, 0)
            layer.role = "normal" if upstream.get(data, False) else "first"
            if _is_depthwise(layer) and layer.role == "normal":
                layer.role = "depthwise"
            d = max([depth.get(n, 0) for n in ins] + [layer.wave + (1 if layer.name in pruned else 0)])
            up = True
        else:
            d = max((depth.get(n, 0) for n in ins), default=0)
            up = any(upstream.get(n, False) for n in ins)
        for out in node.output:
            depth[out] = d
            upstream[out] = up
    # classifier: no prunable layer downstream of its output
    downstream: dict[str, bool] = {}
    for idx in range(len(graph.node) - 1, -1, -1):
        node = graph.node[idx]
        layer = by_node.get(idx)
        below = any(downstream.get(o, False) for o in node.output)
        if layer is not None and not below and layer.role == "normal":
            layer.role = "classifier"
        for name in node_inputs(node):
            downstream[name] = downstream.get(name, False) or below or layer is not None


def _batch_size(model: onnx.ModelProto, init_names: set[str]) -> int:
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
        return 1
    return 1


def _make_feeds(
    model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]], init_names: set[str]
) -> list[dict[str, np.ndarray]]:
    """Calibration samples (no batch dim) -> onnxruntime feeds at the model's batch size."""
    inputs = [vi for vi in model.graph.input if vi.name not in init_names]
    batch = _batch_size(model, init_names)
    for i, sample in enumerate(calibration):
        missing = [vi.name for vi in inputs if vi.name not in sample]
        if missing:
            raise InputError(
                f"calibration sample {i} lacks model input(s) {missing}; each sample must map every "
                f"model input name to an array without the batch dimension"
            )
    feeds: list[dict[str, np.ndarray]] = []
    for start in range(0, len(calibration), batch):
        chunk = calibration[start : start + batch]
        while len(chunk) < batch:  # pad the last batch by repeating samples
            chunk = chunk + calibration[: batch - len(chunk)]
        feed = {}
        for vi in inputs:
            elem = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            want = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            arr = np.stack([np.asarray(s[vi.name]) for s in chunk]).astype(elem, copy=False)
            if len(want) != arr.ndim or any(
                w not in (None, 0, n) for w, n in zip(want, arr.shape, strict=True)
            ):
                raise InputError(
                    f"calibration input {vi.name!r} has per-sample shape {list(arr.shape[1:])}, the model "
                    f"expects {want[1:]} (without the batch dimension)"
                )
            feed[vi.name] = arr
        feeds.append(feed)
    return feeds


def layer_progress(show: bool, total: int, verb: str = "pruning"):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"[bold]{verb}[/bold] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show,
        transient=False,
    )
    return progress, progress.add_task("", total=total)


def _validate(target_sparsity: float, method: str, allocation: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if allocation not in ALLOCATIONS:
        raise InputError(
            f"unknown sparsity allocation {allocation!r}; choose one of {', '.join(ALLOCATIONS)}"
        )
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)):
        raise InputError(f"target sparsity must be a number in [0, 1), got {target_sparsity!r}")
    if not 0.0 <= float(target_sparsity) < 1.0 or np.isnan(target_sparsity):
        raise InputError(f"target sparsity must be in [0, 1), got {target_sparsity}")


def prune_onnx(
    model: onnx.ModelProto,
    calibration: list[dict[str, np.ndarray]],
    target_sparsity: float,
    *,
    method: str = "obs",
    show_progress: bool = False,
    policy: AllocationPolicy | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    blocksize: int = 128,
    percdamp: float = 0.01,
    adaptive_damp: bool = True,
    correct_upstream: bool = True,
    threads: int | None = None,
    allocation: str = "erk",
    sensitivity_samples: int = 16,
) -> PruneResult:
    """Prune ``model`` to ``target_sparsity`` (parameter-weighted over the prunable layers).

    ``calibration``: samples mapping input names to arrays without the batch dimension
    (needed by ``obs`` and by ``allocation="sensitivity"``). ``allocation``: ``erk`` (shape
    rule, :func:`allocation.allocate`) or ``sensitivity`` (measured per-layer damage on
    ``sensitivity_samples`` calibration samples, :func:`allocation.allocate_by_damage`).
    The input model is not modified.
    """
    _validate(target_sparsity, method, allocation)
    target = float(target_sparsity)
    t_start = time.perf_counter()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializer_map(out)
    layers, skipped = find_layers(out)
    notes: list[str] = []
    if not layers:
        notes.append("no prunable Conv/Gemm/MatMul layer with its own float initializer weight found")

    assign_roles_and_waves(out, layers, set())  # roles first; waves once the pruned set is known
    profiles = [LayerProfile(ly.name, ly.params, ly.role, ly.shape) for ly in layers]
    plan = allocate(profiles, target, policy)
    sensitivity_s = None
    if allocation == "sensitivity" and target > 0 and calibration:
        from .sensitivity import measure_damage

        probed = [ly for ly, a in zip(layers, plan.layers, strict=True) if a.n_prune > 0]
        damage = measure_damage(out, probed, calibration[:sensitivity_samples])
        plan = allocate_by_damage(profiles, damage.curves, target, policy)
        sensitivity_s = damage.seconds
        notes.append(
            f"sparsity allocated by measured sensitivity: {len(probed)} layers probed on "
            f"{damage.samples} calibration samples in {damage.seconds:.0f} s"
        )
    notes.extend(plan.notes)
    todo = [ly for ly, a in zip(layers, plan.layers, strict=True) if a.n_prune > 0]
    alloc = {ly.name: a for ly, a in zip(layers, plan.layers, strict=True)}
    assign_roles_and_waves(out, layers, {ly.name for ly in todo})
    extra: dict[str, str] = {}

    n_threads = threads or min(2, os.cpu_count() or 1)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    timings = {"capture_s": 0.0, "hessian_s": 0.0, "prune_s": 0.0}
    if sensitivity_s is not None:
        timings["sensitivity_s"] = sensitivity_s
    progress, task = layer_progress(show_progress, len(todo))
    try:
        with progress:
            if method == "magnitude":
                for layer in todo:
                    progress.update(task, description=layer.name)
                    matrix = layer.to_matrix(numpy_helper.to_array(inits[layer.weight_name]))
                    pruned, _ = magnitude_prune(matrix, alloc[layer.name].n_prune)
                    inits[layer.weight_name] = numpy_helper.from_array(
                        layer.from_matrix(pruned), layer.weight_name
                    )
                    progress.advance(task)
            elif todo:
                if not calibration:
                    raise InputError("OBS pruning needs calibration samples; none were given")
                _obs_pass(
                    out,
                    inits,
                    todo,
                    alloc,
                    calibration,
                    extra,
                    timings,
                    progress,
                    task,
                    max_rows=max_rows,
                    blocksize=blocksize,
                    percdamp=percdamp,
                    adaptive_damp=adaptive_damp,
                    correct_upstream=correct_upstream,
                    threads=n_threads,
                )
    finally:
        torch.set_num_threads(prev_threads)

    write_back_initializers(out, inits)
    onnx.checker.check_model(out)

    reports: list[LayerReport] = []
    zeros = total = 0
    for layer in layers:
        w = numpy_helper.to_array(inits[layer.weight_name])
        z = int((w == 0).sum())
        zeros += z
        total += w.size
        note = f"{method}: {alloc[layer.name].note}"
        if layer.name in extra:
            note += f"; {extra[layer.name]}"
        reports.append(
            LayerReport(
                name=layer.name,
                op_type=layer.op_type,
                parameters=int(w.size),
                sparsity=z / w.size if w.size else 0.0,
                note=note,
            )
        )
    for s in skipped:
        reports.append(
            LayerReport(name=s.name, op_type=s.op_type, parameters=s.params, sparsity=s.sparsity, note=s.note)
        )
    timings["total_s"] = time.perf_counter() - t_start
    return PruneResult(
        model=out,
        layers=reports,
        achieved_sparsity=zeros / total if total else 0.0,
        target_sparsity=target,
        method=method,
        notes=notes,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )


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
    feeds = _make_feeds(model, calibration, set(inits))
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


def _obs_pass(
    model: onnx.ModelProto,
    inits: dict[str, onnx.TensorProto],
    todo: list[PrunableLayer],
    alloc: dict,
    calibration: list[dict[str, np.ndarray]],
    extra: dict[str, str],
    timings: dict[str, float],
    progress,
    task,
    *,
    max_rows: int,
    blocksize: int,
    percdamp: float,
    adaptive_damp: bool,
    correct_upstream: bool,
    threads: int,
) -> None:
    """Wave by wave: capture inputs (earlier waves already pruned), Hessians, SparseGPT."""
    waves = capture_waves(
        model,
        inits,
        todo,
        calibration,
        timings,
        progress,
        task,
        max_rows=max_rows,
        correct_upstream=correct_upstream,
        threads=threads,
    )
    for members, stats in waves:
        for ly in members:
            progress.update(task, description=ly.name)
            t1 = time.perf_counter()
            st = stats[(ly.data_input, ly.spec)]
            h, rows, cross, drift = st.hessian, st.rows, st.cross, st.drift
            # fewer calibration rows than Hessian columns (a classifier sees one row per
            # sample): H is rank-deficient and OBS would fit the calibration set, not the
            # data; scale the dampening up with cols / rows to stay closer to magnitude.
            damp = percdamp * max(1.0, ly.spec.cols / max(1, rows)) if adaptive_damp else percdamp
            w_stored = numpy_helper.to_array(inits[ly.weight_name])
            w = torch.from_numpy(ly.to_matrix(w_stored))
            corrected = ""
            if cross is not None and (rows >= ly.spec.cols or drift >= CORRECTION_MIN_DRIFT):
                # an underdetermined layer (rows < cols, e.g. a classifier seeing one row per
                # sample) would fit calibration noise: correct it only when upstream drift is large
                w = correct_to_dense(w, h, cross, damp)
                corrected = f", corrected for upstream drift {drift:.3f}"
            res = sparsegpt_prune(w, h, alloc[ly.name].n_prune, blocksize=blocksize, percdamp=damp)
            err = relative_output_error(w, res.weight, h)
            extra[ly.name] = (
                f"calibration output error {err:.4f} (relative, squared; {rows} rows, damp {res.damp:.3g}"
                f"{corrected})"
            )
            inits[ly.weight_name] = numpy_helper.from_array(
                ly.from_matrix(res.weight.numpy()), ly.weight_name
            )
            timings["prune_s"] += time.perf_counter() - t1
            progress.advance(task)
