"""onnxruntime latency/throughput: several models in one process, alternating, after warm-up.

Alternating (A B A B ..., order flipped each round) keeps drift in CPU frequency, cache
state and background load from favouring one model, so the speedup of the optimized model
over the baseline is a fair side-by-side ratio.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .evaluate import make_session, providers
from .report import LATENCY_SAMPLES_CAP, LatencyStats


def _feed_for(session, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    type_map = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(uint8)": np.uint8,
        "tensor(int8)": np.int8,
        "tensor(bool)": np.bool_,
    }
    for inp in session.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif i == 0:
                shape.append(batch_size)
            else:
                raise InputError(
                    f"model input '{inp.name}' has a dynamic dimension {i} ('{d}'); benchmark needs static "
                    "shapes apart from the batch dimension"
                )
        dtype = type_map.get(inp.type, np.float32)
        if np.dtype(dtype).kind == "f":
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=dtype)
    return feed


def with_batch_size(path: Path, batch_size: int, out_dir: Path) -> Path:
    """A copy of the model whose inputs/outputs have batch dimension ``batch_size`` (when the
    graph allows it); the original path when it already has it."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    first = [i.type.tensor_type.shape.dim[0] for i in inputs if i.type.tensor_type.shape.dim]
    if all(d.HasField("dim_value") and d.dim_value == batch_size for d in first):
        return path
    for vi in list(inputs) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = batch_size
    del model.graph.value_info[:]
    out = out_dir / f"{path.stem}.b{batch_size}.onnx"
    onnx.save(model, str(out))
    return out


def _samples(ms: np.ndarray, cap: int = LATENCY_SAMPLES_CAP) -> list[float]:
    """All timings in measured order, or ``cap`` evenly spaced ranks of the sorted timings
    (min and max included): the distribution survives, the report stays small."""
    if len(ms) > cap:
        ms = np.sort(ms)[np.round(np.linspace(0, len(ms) - 1, cap)).astype(int)]
    return [round(float(v), 4) for v in ms]


def _stats(times_s: list[float], batch_size: int, provider: str) -> LatencyStats:
    ms = np.asarray(times_s) * 1000.0
    mean = float(ms.mean())
    return LatencyStats(
        provider=provider,
        batch_size=batch_size,
        iterations=len(ms),
        mean_ms=round(mean, 4),
        median_ms=round(float(np.median(ms)), 4),
        p90_ms=round(float(np.percentile(ms, 90)), 4),
        std_ms=round(float(ms.std()), 4),
        throughput_items_per_s=round(batch_size * 1000.0 / mean, 3) if mean > 0 else 0.0,
        samples_ms=_samples(ms),
    )


def _sessions(model_paths: list[Path], batch_size: int, device: str, tmp: Path, threads: int = 0):
    sessions, feeds, batches = [], [], []
    for path in model_paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"model file '{path}' does not exist; pass an existing .onnx file")
        try:
            sess = make_session(with_batch_size(path, batch_size, tmp), device, threads=threads)
            feed = _feed_for(sess, batch_size)
            sess.run(None, feed)
            bs = batch_size
        except InputError:
            raise
        except Exception:
            # The graph hard-codes its batch size (e.g. a Reshape to [1, -1]): use it as is.
            try:
                sess = make_session(path, device, threads=threads)
            except Exception as err:
                raise InputError(f"model file '{path}' cannot be loaded by onnxruntime: {err}") from None
            dim0 = sess.get_inputs()[0].shape[0]
            bs = dim0 if isinstance(dim0, int) and dim0 > 0 else batch_size
            feed = _feed_for(sess, bs)
        sessions.append(sess)
        feeds.append(feed)
        batches.append(bs)
    return sessions, feeds, batches


def _cpu_seconds() -> tuple[float, float, int] | None:
    """(busy seconds of the CPUs this process may run on, all processes; CPU seconds of this
    process; how many such CPUs) so far, from ``/proc/stat``; None where it cannot be read.
    The difference over an interval is what *other* processes took from these CPUs (Linux's
    CPU pressure counter would not do: a benchmark's own intra-op threads raise it)."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name in cpus:
                ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, len(cpus)


def _others_share(before: tuple[float, float, int] | None, after, elapsed: float) -> float | None:
    """Share of this process's CPUs used by other processes between two ``_cpu_seconds``."""
    if before is None or after is None or elapsed <= 0 or not after[2]:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(min(1.0, max(0.0, others / (elapsed * after[2]))), 4)


def measure_latency(
    model_paths: list[Path],
    *,
    batch_size: int = 1,
    device: str = "cpu",
    seconds: float = 5.0,
    warmup: int = 10,
    show_progress: bool = False,
    min_iterations: int = 10,
) -> list[LatencyStats]:
    """Latency of each model (seconds is the time budget per model), measured alternately."""
    from .progress import bar

    provider = providers(device)[0]
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        sessions, feeds, batches = _sessions([Path(p) for p in model_paths], batch_size, device, Path(tmp))
        for sess, feed in zip(sessions, feeds, strict=True):
            for _ in range(warmup):
                sess.run(None, feed)
        times: list[list[float]] = [[] for _ in sessions]
        budget = seconds * len(sessions)
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        rounds = 0
        with bar("benchmark", round(budget, 1), enabled=show_progress) as b:
            while True:
                order = range(len(sessions)) if rounds % 2 == 0 else reversed(range(len(sessions)))
                for i in order:
                    t0 = time.perf_counter()
                    sessions[i].run(None, feeds[i])
                    times[i].append(time.perf_counter() - t0)
                rounds += 1
                elapsed = time.perf_counter() - started
                b.update(completed=min(elapsed, budget))
                if elapsed >= budget and rounds >= min_iterations:
                    break
        pressure = _others_share(cpu_before, _cpu_seconds(), time.perf_counter() - started)
    stats = [_stats(t, bs, provider) for t, bs in zip(times, batches, strict=True)]
    for st in stats:
        st.others_cpu_share = pressure
    return stats


def measure_async(
    model_path: Path,
    *,
    batch_size: int = 1,
    device: str = "cpu",
    seconds: float = 5.0,
    streams: int = 2,
    warmup: int = 5,
) -> LatencyStats:
    """Async scenario: ``streams`` concurrent requests (threads sharing one session, each
    request using ``cores / streams`` threads); throughput counts all completed items."""

    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, streams))
    with tempfile.TemporaryDirectory(prefix="sparsify-bench-") as tmp:
        sessions, feeds, batches = _sessions(
            [Path(model_path)], batch_size, device, Path(tmp), threads=threads
        )
        sess, feed, bs = sessions[0], feeds[0], batches[0]
        for _ in range(warmup):
            sess.run(None, feed)
        lock = threading.Lock()
        times: list[float] = []
        deadline = time.perf_counter() + seconds

        def worker() -> None:
            local = []
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                sess.run(None, feed)
                local.append(time.perf_counter() - t0)
            with lock:
                times.extend(local)

        started = time.perf_counter()
        pool = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, streams))]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.perf_counter() - started
    stats = _stats(times, bs, providers(device)[0])
    stats.throughput_items_per_s = round(len(times) * bs / wall, 3) if wall > 0 else 0.0
    return stats
