"""Run ONNX models on samples and compare outputs: fidelity to a baseline, accuracy with labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .progress import track
from .report import Fidelity

Sample = dict[str, np.ndarray]


def providers(device: str = "cpu") -> list[str]:
    """onnxruntime providers for a device: CUDA when asked and present, CPU otherwise."""
    import onnxruntime as ort

    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(path: Path | str, device: str = "cpu", *, threads: int = 0, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))


def _batch_dim(session) -> int | None:
    dims = {tuple(i.shape)[0] if i.shape else None for i in session.get_inputs()}
    static = [d for d in dims if isinstance(d, int) and d > 0]
    return static[0] if static else None


def run_session(
    session, samples: list[Sample], batch_size: int = 1, *, progress: str | None = None
) -> list[np.ndarray]:
    """First output of each sample. Batches to the model's static batch size (padding the
    last batch) or, for a dynamic batch dimension, to ``batch_size``."""
    static = _batch_dim(session)
    bs = static or max(1, batch_size)
    names = [i.name for i in session.get_inputs()]
    out_name = session.get_outputs()[0].name
    results: list[np.ndarray] = []
    starts = range(0, len(samples), bs)
    for start in track(starts, progress or "", enabled=progress is not None):
        chunk = samples[start : start + bs]
        real = len(chunk)
        if static and real < bs:
            chunk = chunk + [chunk[-1]] * (bs - real)
        feed = {n: np.stack([s[n] for s in chunk]) for n in names}
        out = session.run([out_name], feed)[0]
        results.extend(np.asarray(out[i]) for i in range(real))
    return results


def run_onnx(
    path: Path | str,
    samples: list[Sample],
    batch_size: int = 1,
    device: str = "cpu",
    *,
    progress: str | None = None,
) -> list[np.ndarray]:
    """Run a model on samples (no batch dim) and return the first output per sample
    (``progress``: a description to show a progress bar under)."""
    return run_session(make_session(path, device), samples, batch_size, progress=progress)


def run_onnx_outputs(
    path: Path | str, samples: list[Sample], batch_size: int = 1, device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Every output of a model over all samples: output name -> array with one row per sample
    (a detector's boxes and scores, where ``run_onnx`` keeps only the first output)."""
    session = make_session(path, device)
    static = _batch_dim(session)
    bs = static or max(1, batch_size)
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    rows: dict[str, list[np.ndarray]] = {n: [] for n in outputs}
    for start in range(0, len(samples), bs):
        chunk = samples[start : start + bs]
        real = len(chunk)
        if static and real < bs:
            chunk = chunk + [chunk[-1]] * (bs - real)
        feed = {n: np.stack([s[n] for s in chunk]) for n in names}
        for name, value in zip(outputs, session.run(outputs, feed), strict=True):
            rows[name].append(np.asarray(value)[:real])
    return {n: np.concatenate(v) for n, v in rows.items()}


def _is_classifier(outputs: list[np.ndarray]) -> bool:
    """Logits-like: one vector of >1 scores per sample (leading singleton dims allowed)."""
    if not outputs:
        return False
    squeezed = np.squeeze(outputs[0])
    return squeezed.ndim == 1 and squeezed.shape[0] > 1 and outputs[0].dtype.kind == "f"


def top1(outputs: list[np.ndarray]) -> np.ndarray:
    return np.array([int(np.argmax(np.asarray(o).reshape(-1))) for o in outputs])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def fidelity(baseline: list[np.ndarray], optimized: list[np.ndarray]) -> Fidelity:
    """Agreement with the baseline: top-1 agreement for classifiers, mean cosine for anything."""
    if len(baseline) != len(optimized):
        raise ValueError(
            f"fidelity needs as many outputs on both sides ({len(baseline)} vs {len(optimized)})"
        )
    if not baseline:
        raise ValueError("fidelity needs at least one sample")
    cos = float(np.mean([cosine(a, b) for a, b in zip(baseline, optimized, strict=True)]))
    agree = None
    if _is_classifier(baseline):
        agree = float(np.mean(top1(baseline) == top1(optimized)))
    return Fidelity(samples=len(baseline), top1_agreement=agree, cosine_similarity=round(cos, 6))


def accuracy(outputs: list[np.ndarray], labels: list[int]) -> float:
    """Top-1 accuracy of per-sample score vectors against integer labels."""
    if len(outputs) != len(labels):
        raise ValueError(
            f"accuracy needs one label per output ({len(outputs)} outputs, {len(labels)} labels)"
        )
    if not labels:
        raise ValueError("accuracy needs at least one sample")
    return float(np.mean(top1(outputs) == np.asarray(labels)))


def fidelity_score(fid: Fidelity) -> float:
    """One number for ranking candidates: top-1 agreement when defined (classifiers), else a
    detector's box agreement, else cosine similarity."""
    for value in (fid.top1_agreement, fid.box_agreement):
        if value is not None:
            return value
    return fid.cosine_similarity


def _per_class(outputs: list[np.ndarray], labels: list[int], num_classes: int) -> tuple[np.ndarray, ...]:
    if len(outputs) != len(labels) or not labels:
        raise ValueError(
            f"macro scores need one label per output ({len(outputs)} outputs, {len(labels)} labels)"
        )
    pred, true = top1(outputs), np.asarray(labels)
    classes = np.arange(max(num_classes, int(true.max()) + 1, int(pred.max()) + 1))
    tp = np.array([np.sum((pred == c) & (true == c)) for c in classes], dtype=np.float64)
    fp = np.array([np.sum((pred == c) & (true != c)) for c in classes], dtype=np.float64)
    fn = np.array([np.sum((pred != c) & (true == c)) for c in classes], dtype=np.float64)
    present = np.array([np.any(true == c) or np.any(pred == c) for c in classes])
    return tp[present], fp[present], fn[present]


def macro_recall(outputs: list[np.ndarray], labels: list[int], num_classes: int = 0) -> float:
    """Recall averaged over the classes in labels or predictions (each class counts the same;
    a class that is only predicted scores 0), as scikit-learn's ``average="macro"``."""
    tp, _, fn = _per_class(outputs, labels, num_classes)
    support = tp + fn
    return float(np.mean(np.where(support > 0, tp / np.maximum(support, 1), 0.0)))


def macro_f1(outputs: list[np.ndarray], labels: list[int], num_classes: int = 0) -> float:
    """F1 averaged over the classes that occur in labels or predictions (0 for a class never hit)."""
    tp, fp, fn = _per_class(outputs, labels, num_classes)
    denom = 2 * tp + fp + fn
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))
