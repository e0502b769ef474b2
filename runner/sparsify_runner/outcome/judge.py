"""How much a candidate costs against the baseline, in the units of the accuracy budget.

With labels the headline metric is measured (accuracy, macro F1 / recall, a detector's mAP)
and the drop is paired: both models on the same samples. Without labels a classifier's cost
is its *estimated accuracy drop*: the baseline's own class probabilities stand in for the
unknown labels, so a candidate that flips a sample from class a to class b is charged
``p(a) - p(b)`` of that sample. A flip between two near-tied classes (the low-margin photo
crops where half an 8-bit input step already changes 5% of the top-1s) costs almost nothing;
a flip away from a confident prediction costs its confidence. When the baseline is
calibrated this is the expected accuracy drop; top-1 agreement, which charges every flip a
full point, is kept beside it in the report. Other outputs are charged ``1 - cosine``; a
detector without boxes ``1 - box agreement``. docs/one-shot.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Z90 = 1.645  # two-sided 90% normal interval


@dataclass(frozen=True)
class Assessment:
    """One candidate against the baseline on one split of held-out samples."""

    metric: str
    """accuracy, f1, recall, mAP, mAP50, estimated accuracy, cosine, box agreement."""
    baseline: float
    value: float
    drop: float
    """baseline - value (positive: the candidate is worse)."""
    low: float
    high: float
    """90% interval of the drop."""
    samples: int
    within_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "baseline": round(self.baseline, 6),
            "value": round(self.value, 6),
            "drop": round(self.drop, 6),
            "drop_interval": [round(self.low, 6), round(self.high, 6)],
            "samples": self.samples,
            "within_budget": self.within_budget,
        }


def softmax(rows: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, log-probabilities or probabilities (kept as they are)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        return rows
    shifted = rows - rows.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _rows(outputs: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs])


def _paired(per_sample: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-sample drops and its 90% normal interval."""
    n = len(per_sample)
    mean = float(per_sample.mean())
    se = float(per_sample.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return mean, mean - Z90 * se, mean + Z90 * se


def _bootstrap(score, base: np.ndarray, cand: np.ndarray, labels: np.ndarray, rounds: int = 200):
    """Paired bootstrap interval of ``score(base) - score(cand)`` (fixed seed: same input, same
    interval)."""
    rng = np.random.default_rng(0)
    n = len(labels)
    drops = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        drops.append(score(base[idx], labels[idx]) - score(cand[idx], labels[idx]))
    return float(np.percentile(drops, 5)), float(np.percentile(drops, 95))


class Judge:
    """Assesses candidates' held-out outputs against the baseline's on the same samples."""

    def __init__(
        self,
        baseline_outputs: Any,
        *,
        budget: float,
        labels: list | None = None,
        metric: str = "auto",
        detector: bool = False,
    ) -> None:
        self.baseline_outputs = baseline_outputs
        self.budget = budget
        self.labels = labels
        self.detector = detector
        self.metric = _metric_name(baseline_outputs, labels, metric, detector)

    def assess(self, outputs: Any) -> Assessment:
        base, value, low, high, n = self._measure(outputs)
        drop = base - value
        return Assessment(
            metric=self.metric,
            baseline=base,
            value=value,
            drop=drop,
            low=low,
            high=high,
            samples=n,
            within_budget=drop <= self.budget + 1e-12,
        )

    def _measure(self, outputs: Any) -> tuple[float, float, float, float, int]:
        """(baseline value, candidate value, drop interval low, high, samples)."""
        if self.detector:
            return self._detection(outputs)
        if self.metric == "cosine":
            from ..evaluate import cosine

            cos = np.array([cosine(a, b) for a, b in zip(self.baseline_outputs, outputs, strict=True)])
            drop, low, high = _paired(1.0 - cos)
            return 1.0, 1.0 - drop, low, high, len(cos)
        base_rows, cand_rows = _rows(self.baseline_outputs), _rows(outputs)
        base_top, cand_top = base_rows.argmax(axis=1), cand_rows.argmax(axis=1)
        if self.metric == "estimated accuracy":
            p = softmax(base_rows)
            idx = np.arange(len(p))
            per_sample = p[idx, base_top] - p[idx, cand_top]
            drop, low, high = _paired(per_sample)
            base = float(p[idx, base_top].mean())
            return base, base - drop, low, high, len(p)
        labels = np.asarray(self.labels)
        if self.metric == "accuracy":
            per_sample = (base_top == labels).astype(float) - (cand_top == labels).astype(float)
            drop, low, high = _paired(per_sample)
            base = float(np.mean(base_top == labels))
            return base, base - drop, low, high, len(labels)
        score = _macro_score(self.metric)
        base, value = score(base_top, labels), score(cand_top, labels)
        low, high = _bootstrap(score, base_top, cand_top, labels)
        return base, value, low, high, len(labels)

    def _detection(self, outputs: Any) -> tuple[float, float, float, float, int]:
        from ..detection.postprocess import postprocess

        if self.labels is None:
            from ..detection.fidelity import detection_fidelity

            fid = detection_fidelity(self.baseline_outputs, outputs)
            agree = 1.0 if fid.box_agreement is None else fid.box_agreement
            n = max(1, fid.box_count or 0)
            se = float(np.sqrt(max(agree * (1 - agree), 1e-12) / n))
            return 1.0, agree, 1.0 - agree - Z90 * se, 1.0 - agree + Z90 * se, fid.samples
        from ..detection.metrics import mean_average_precision
        from ..detection.postprocess import parse_outputs

        classes = [str(i) for i in range(parse_outputs(self.baseline_outputs)[0][1].shape[1])]
        key = "map50" if self.metric == "mAP50" else "map"
        base = float(mean_average_precision(postprocess(self.baseline_outputs), self.labels, classes)[key])
        value = float(mean_average_precision(postprocess(outputs), self.labels, classes)[key])
        # mAP has no cheap paired interval; report the point estimate as its own interval
        return base, value, base - value, base - value, len(self.labels)


def _metric_name(outputs: Any, labels: list | None, metric: str, detector: bool) -> str:
    if detector:
        if labels is None:
            return "box agreement"
        return "mAP50" if metric == "mAP50" else "mAP"
    from ..evaluate import _is_classifier

    if not _is_classifier(outputs):
        return "cosine"
    if labels is None or metric == "fidelity":
        return "estimated accuracy"
    return metric if metric in ("f1", "recall") else "accuracy"


def _macro_score(metric: str):
    """Macro F1 or recall of predicted class ids, as ``evaluate.macro_f1`` / ``macro_recall``
    compute them from score vectors (vectorized here: the bootstrap calls it 400 times)."""

    def score(pred: np.ndarray, labels: np.ndarray) -> float:
        classes = np.union1d(pred, labels)
        hit = pred[:, None] == classes[None, :]
        true = labels[:, None] == classes[None, :]
        tp = (hit & true).sum(axis=0).astype(float)
        fp = (hit & ~true).sum(axis=0)
        fn = (~hit & true).sum(axis=0)
        if metric == "recall":
            support = tp + fn
            return float(np.mean(np.where(support > 0, tp / np.maximum(support, 1), 0.0)))
        denom = 2 * tp + fp + fn
        return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))

    return score
