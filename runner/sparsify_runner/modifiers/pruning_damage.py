"""Pruning damage: how much pruning each layer alone hurts the model's outputs, measured
(the per-layer sensitivity that damage-based allocation spends the sparsity budget by).

For each prunable layer alone, the layer is pruned at a few sparsity levels the way the
pruning pass will prune it, and the model is run on a few calibration samples: the damage is
the normalized squared error of the model's outputs, ``||y - y0||^2 / ||y0||^2``, averaged
over the samples. Small errors of different layers add up roughly independently, so the
curves let :func:`allocation.allocate_by_damage` spend the global sparsity budget where it
hurts least.

* ``method="obs"``: every probed layer's input Hessian is captured once on the *dense* model
  (from the calibration samples other than the probe samples, when there are enough, so an
  underdetermined layer such as a classifier that sees one row per sample is not judged on
  the samples it was fitted to), and the layer is pruned with the OBS update
  (``obs.sparsegpt_prune``, all levels in one sweep).
* ``method="magnitude"``: the smallest-magnitude weights (per output row) are zeroed. It
  over-states what OBS (which re-fits the remaining weights) loses on wide layers.

docs/one-shot.md, "Measurements behind the allocation policy", has what each probe bought.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ..evaluate import make_session
from ..kernels.damped_hessian import obs_damp
from ..kernels.hessian import DEFAULT_MAX_ROWS
from ..kernels.magnitude import magnitude_prune
from ..kernels.obs import sparsegpt_prune
from ..onnx_graph.capture import LayerStatistics, capture_waves, initializer_map
from ..onnx_graph.feeds import stack_batches
from ..progress import layer_progress

DEFAULT_LEVELS = (0.25, 0.5, 0.7, 0.85, 0.95)
OBS_LEVELS = (0.3, 0.5, 0.7, 0.9)


@dataclass
class DamageCurves:
    curves: dict[str, list[tuple[float, float]]]
    """layer name -> [(sparsity, output nMSE)], sparsity 0 included with damage 0."""
    samples: int
    seconds: float


def _probe_session(model: onnx.ModelProto, weight_names: list[str], threads: int):
    """One session for every probe: the probed weights become overridable initializers (also
    graph inputs), so each probe feeds its pruned weight instead of building a new model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inits = {init.name: init for init in probe.graph.initializer}
    present = {i.name for i in probe.graph.input}
    for name in weight_names:
        if name not in present:
            init = inits[name]
            probe.graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    with tempfile.TemporaryDirectory(prefix="sparsify-sensitivity-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        # no graph rewrites: optimizers that fold or fuse weights trip over overridable ones
        return make_session(path, threads=threads, optimize=False)


def _outputs(session, batches: list[dict[str, np.ndarray]], weights: dict[str, np.ndarray]) -> np.ndarray:
    out_name = session.get_outputs()[0].name
    rows = [session.run([out_name], {**batch, **weights})[0] for batch in batches]
    return np.concatenate([np.asarray(r, dtype=np.float64).reshape(r.shape[0], -1) for r in rows])


def _batches(session, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Samples stacked to the session's static batch size, else one by one."""
    inputs = session.get_inputs()
    dims = [i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0]
    return stack_batches(samples, dims[0] if dims else 1, [i.name for i in inputs])


def _dense_statistics(
    model: onnx.ModelProto, layers: list, samples: list[dict[str, np.ndarray]], max_rows: int, threads: int
) -> dict:
    """Every layer's input statistics on the dense model, captured in one pass."""
    wave = [replace(layer, wave=0) for layer in layers]
    progress, task = layer_progress(False, 1)
    timings = {"capture_s": 0.0, "hessian_s": 0.0}
    stats: dict = {}
    for _, found in capture_waves(
        model,
        initializer_map(model),
        wave,
        samples,
        timings,
        progress,
        task,
        max_rows=max_rows,
        correct_upstream=False,
        threads=threads,
    ):
        stats.update(found)
    return stats


def _obs_levels(layer, matrix: np.ndarray, st: LayerStatistics, levels, percdamp: float, adaptive: bool):
    """The layer pruned by OBS to every level, in one sweep (levels stacked as groups)."""
    groups = matrix.shape[0]
    k = len(levels)
    w = torch.from_numpy(np.ascontiguousarray(matrix)).repeat(k, 1, 1)
    h = st.hessian.repeat(k, 1, 1)
    counts = [round(level * matrix[0].size) for level in levels for _ in range(groups)]
    damp = obs_damp(percdamp, layer.spec.cols, st.rows, adaptive)
    pruned = sparsegpt_prune(w, h, counts, percdamp=damp).weight.numpy()
    return [pruned[i * groups : (i + 1) * groups] for i in range(k)]


def measure_damage(
    model: onnx.ModelProto,
    layers: list,
    samples: list[dict[str, np.ndarray]],
    *,
    method: str = "magnitude",
    hessian_samples: list[dict[str, np.ndarray]] | None = None,
    levels: tuple[float, ...] | None = None,
    percdamp: float = 0.01,
    adaptive_damp: bool = True,
    max_rows: int = DEFAULT_MAX_ROWS,
    threads: int = 0,
) -> DamageCurves:
    """Damage curves of ``layers`` (``onnx_graph.layers.PrunableLayer``), one layer pruned at a
    time, measured on ``samples``. ``method="obs"`` needs ``hessian_samples`` (the layer inputs
    for the OBS update). The model is not modified."""
    started = time.perf_counter()
    levels = levels or (OBS_LEVELS if method == "obs" else DEFAULT_LEVELS)
    if method == "obs" and not hessian_samples:
        raise ValueError("the OBS sensitivity probe needs calibration samples for the Hessians")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads or min(2, prev_threads))
    try:
        curves = _curves(
            model,
            layers,
            samples,
            method,
            hessian_samples,
            levels,
            percdamp,
            adaptive_damp,
            max_rows,
            threads,
        )
    finally:
        torch.set_num_threads(prev_threads)
    return DamageCurves(curves=curves, samples=len(samples), seconds=round(time.perf_counter() - started, 3))


def _curves(
    model, layers, samples, method, hessian_samples, levels, percdamp, adaptive_damp, max_rows, threads
):
    """:func:`measure_damage` with torch's threads set; ``threads`` is onnxruntime's (0: its own)."""
    inits = {init.name: init for init in model.graph.initializer}
    capture_threads = torch.get_num_threads()
    stats = (
        _dense_statistics(model, layers, hessian_samples, max_rows, capture_threads)
        if method == "obs"
        else {}
    )
    session = _probe_session(model, [layer.weight_name for layer in layers], threads)
    batches = _batches(session, samples)
    reference = _outputs(session, batches, {})
    scale = float(np.mean(np.sum(reference**2, axis=1))) or 1.0
    curves: dict[str, list[tuple[float, float]]] = {}
    for layer in layers:
        matrix = layer.to_matrix(numpy_helper.to_array(inits[layer.weight_name]))
        if method == "obs":
            st = stats[(layer.data_input, layer.spec)]
            variants = _obs_levels(layer, matrix, st, levels, percdamp, adaptive_damp)
        else:
            variants = [magnitude_prune(matrix, int(round(level * matrix.size)))[0] for level in levels]
        points = [(0.0, 0.0)]
        for level, pruned in zip(levels, variants, strict=True):
            out = _outputs(session, batches, {layer.weight_name: layer.from_matrix(pruned)})
            points.append((level, float(np.mean(np.sum((out - reference) ** 2, axis=1))) / scale))
        curves[layer.name] = points
    return curves
