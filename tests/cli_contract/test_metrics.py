"""``--eval-metric`` f1 / recall (macro) / mAP and one-shot's sample limits, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ONESHOT_FAST, assert_bad, report, run_cli, write_npz


def _one_shot(model, data, out, *extra):
    return [
        "run",
        "one-shot",
        "--use-case",
        "ic",
        "--model",
        str(model),
        "--data",
        str(data),
        "--recipe-args",
        json.dumps(ONESHOT_FAST),
        "-o",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize("metric", ["f1", "recall"])
def test_one_shot_macro_metric_and_sample_limits(tiny_onnx, calib, tmp_path, capsys, metric):
    out = tmp_path / "out"
    code, _, err = run_cli(
        _one_shot(
            tiny_onnx,
            calib,
            out,
            "--optim-level",
            "0",
            "--eval-metric",
            metric,
            "--train-samples",
            "7",
            "--val-samples",
            "3",
        ),
        capsys,
    )
    assert code == 0, err
    r = report(out)
    assert r["settings"]["calibration_samples"] == 7 and r["settings"]["holdout_samples"] == 3
    b, o = r["baseline"], r["optimized"]
    assert b["f1"] is not None and b["recall"] is not None
    assert (o["f1"], o["recall"]) == (b["f1"], b["recall"])  # optim level 0: the baseline itself


def test_macro_scores_match_scikit_learn():
    from sklearn.metrics import f1_score, recall_score
    from sparsify_runner.evaluate import macro_f1, macro_recall

    rng = np.random.default_rng(0)
    for trial in range(20):
        n, k = int(rng.integers(3, 40)), int(rng.integers(2, 6))
        labels = rng.integers(0, k, n).tolist()
        outputs = [rng.standard_normal(k).astype(np.float32) for _ in range(n)]
        preds = [int(np.argmax(o)) for o in outputs]
        assert macro_f1(outputs, labels, k) == pytest.approx(f1_score(labels, preds, average="macro"))
        assert macro_recall(outputs, labels, k) == pytest.approx(
            recall_score(labels, preds, average="macro", zero_division=0)
        ), trial


def test_macro_metric_without_labels_and_map_are_one_line(tiny_onnx, tmp_path, capsys):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.savez(unlabeled / f"{i}.npz", x=rng.standard_normal((3, 16, 16)).astype(np.float32))
    out = tmp_path / "o"
    assert_bad(
        _one_shot(tiny_onnx, unlabeled, out, "--eval-metric", "recall"),
        capsys,
        "eval metric 'recall' needs labels",
        out=out,
    )
    od = [
        "run",
        "one-shot",
        "--use-case",
        "object_detection",
        "--model",
        str(tiny_onnx),
        "--data",
        str(unlabeled),
        "--eval-metric",
        "mAP",
        "-o",
        str(out),
        "--quiet",
    ]
    assert_bad(od, capsys, "eval metric 'mAP' needs ground-truth boxes", "'boxes'", "'labels'", out=out)
    # a classifier's 'label' key on a detector's samples is named as the problem
    od[od.index("--data") + 1] = str(write_npz(tmp_path / "c", 6, (3, 16, 16), "x"))
    assert_bad(od, capsys, "unknown key(s) 'label'", "optional 'boxes' and 'labels'", out=out)
    assert_bad(
        _one_shot(tiny_onnx, unlabeled, out, "--eval-metric", "mAP"),
        capsys,
        "'mAP' is for object-detection",
        out=out,
    )
