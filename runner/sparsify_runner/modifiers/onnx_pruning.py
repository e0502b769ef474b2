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
   earlier waves already pruned, ``onnx_graph.capture``), build each layer's Hessian
   (``hessian``) and prune + update its weights (``obs``). With ``correct_upstream`` the
   unpruned model runs alongside and each layer first gets least-squares weights that map
   its drifted inputs to the dense model's output (``damped_hessian.correct_to_dense``), so pruning
   also undoes the error accumulated upstream; underdetermined layers (fewer calibration
   rows than inputs, e.g. a classifier) only when the drift is large (measured: it fits
   calibration noise otherwise). ``method="magnitude"``
   zeroes the smallest weights with the same allocation;
4. write the weights back (same names, dtypes, inputs and outputs) and check the model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import InputError
from ..kernels.allocation import AllocationPolicy, LayerProfile, allocate, allocate_by_damage
from ..kernels.damped_hessian import correct_to_dense, obs_damp
from ..kernels.hessian import DEFAULT_MAX_ROWS
from ..kernels.magnitude import magnitude_prune
from ..kernels.obs import relative_output_error, sparsegpt_prune
from ..onnx_graph.capture import capture_waves, initializer_map, write_back_initializers
from ..onnx_graph.layers import PrunableLayer, assign_roles_and_waves, find_layers
from ..progress import layer_progress
from ..report import LayerReport
from .pruning_damage import measure_damage

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
    rule, :func:`allocation.allocate`) or ``sensitivity`` (the model's output damage with each
    layer alone pruned by ``method``, measured on ``sensitivity_samples`` calibration samples,
    :func:`sensitivity.measure_damage` and :func:`allocation.allocate_by_damage`).
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
        probed = [ly for ly, a in zip(layers, plan.layers, strict=True) if a.n_prune > 0]
        probe = calibration[:sensitivity_samples]
        # OBS Hessians from the other samples when there are enough, so the damage of an
        # underdetermined layer (a classifier) is not measured on the samples it was fitted to
        rest = calibration[sensitivity_samples:]
        damage = measure_damage(
            out,
            probed,
            probe,
            method=method,
            hessian_samples=rest if len(rest) >= len(probe) else calibration,
            percdamp=percdamp,
            adaptive_damp=adaptive_damp,
            max_rows=max_rows,
            threads=threads or 0,
        )
        plan = allocate_by_damage(profiles, damage.curves, target, policy)
        sensitivity_s = damage.seconds
        notes.append(
            f"sparsity allocated by measured sensitivity: {len(probed)} layers {method}-pruned alone on "
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
            damp = obs_damp(percdamp, ly.spec.cols, rows, adaptive_damp)
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
