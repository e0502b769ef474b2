"""Quantization-aware training: the simulation is what onnxruntime runs, and the pathways
build INT8 from both the plain and the QAT-tuned model, keeping the better one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import sparsifyctl
from helpers import conv_weights, report
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from sparsify_runner.modifiers.qat import FakeQuantModifier, fake_quant_weight
from torch import nn


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()


def test_weight_fake_quant_is_per_channel_int8_and_keeps_zeros():
    w = torch.randn(4, 3, 3, 3)
    w[0] = 0
    w[1, 0] = 0
    q = fake_quant_weight(w)
    assert torch.equal(q[0], torch.zeros_like(q[0])) and torch.equal(q[1, 0], torch.zeros_like(q[1, 0]))
    for c in range(1, 4):
        scale = w[c].abs().max() / 127
        steps = q[c] / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # on the channel's own int8 grid
        assert steps.abs().max() <= 127 + 1e-3
    assert float((q - w).abs().max()) <= float(w.abs().amax(dim=(1, 2, 3)).max() / 127 / 2) + 1e-6


def test_install_and_remove_keep_parameters_and_restore_the_layers():
    model = _tiny()
    keys = list(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    fq = FakeQuantModifier()
    fq.install(model)
    assert list(model.state_dict()) == keys  # masks, checkpoints and export see the same names
    model.train()
    out = model(x)
    out.sum().backward()
    assert model[0].weight.grad is not None and float(model[0].weight.grad.abs().sum()) > 0  # STE
    model.eval()
    assert not torch.allclose(model(x), ref)  # INT8 is simulated
    saved = fq.state_dict()
    assert {"0", "3", "3:output"} <= set(saved)
    fq.remove()
    assert torch.allclose(model(x), ref)  # plain layers again (no train-mode state in this model)
    again = FakeQuantModifier()
    again.load_state_dict(saved)  # a resumed run loads ranges before installing
    again.install(model)
    assert float(again.observers["3"].high) == pytest.approx(float(saved["3"]["high"]))


def test_simulation_matches_onnxruntime_static_int8(tmp_path: Path):
    """The fake-quantized model is far closer to onnxruntime's QDQ INT8 than FP32 is."""
    model = _tiny()
    calib, test = torch.randn(64, 3, 8, 8), torch.randn(32, 3, 8, 8)
    fp32_path, int8_path = tmp_path / "m.onnx", tmp_path / "q.onnx"
    torch.onnx.export(
        model,
        (calib[:1],),
        str(fp32_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib.numpy()}])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(fp32_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    runtime = ort.InferenceSession(str(int8_path)).run(None, {"input": test.numpy()})[0]
    with torch.no_grad():
        fp32 = model(test).numpy()
        fq = FakeQuantModifier(momentum=1.0)
        fq.install(model)
        model.train()
        model(calib)  # ranges = min/max of the calibration batch, like MinMax calibration
        model.eval()
        simulated = model(test).numpy()
    assert np.abs(simulated - runtime).mean() < 0.5 * np.abs(fp32 - runtime).mean()


FAST = {"epochs": 4, "batch_size": 8, "checkpoint_every": 3}


def _run(image_data: Path, cnn_checkpoint: Path, out: Path, level: str, recipe_args: dict | None = None):
    args = [
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(cnn_checkpoint),
        "--data",
        str(image_data),
        "--optim-level",
        level,
        "--train-kwargs",
        json.dumps(FAST),
        "-o",
        str(out),
        "--quiet",
    ]
    if recipe_args is not None:
        args += ["--recipe-args", json.dumps(recipe_args)]
    return sparsifyctl(*args)


def test_training_aware_compares_static_int8_with_qat(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    # a loose accuracy budget and no speed floor: both INT8 routes are measured on val
    proc = _run(image_data, cnn_checkpoint, out, "0.5", {"max_int8_accuracy_drop": 1.0, "qat_epochs": 2})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = report(out)
    phases = [e["phase"] for e in r["training"]]
    assert phases[-2:] == ["qat", "qat"] and phases.count("main") == 4
    qat_records = [e for e in r["training"] if e["phase"] == "qat"]
    assert all(e["sparsity"] > 0.5 for e in qat_records)  # the zeros are held during QAT
    names = [c["name"] for c in r["candidates"]]
    assert any(n.startswith("ptq: ") for n in names) and any(n.startswith("qat: ") for n in names)
    source = r["settings"]["int8_source"]
    picked = [c["name"] for c in r["candidates"] if c["chosen"] and not c["name"].endswith("(val split)")]
    # only the search whose model is used has a chosen candidate
    assert len(picked) == (source is not None) and all(n.startswith(f"{source}: ") for n in picked)
    if source is not None:  # INT8 was faster here: the chosen one is the more accurate
        vals = {c["name"].split()[1]: c for c in r["candidates"] if c["name"].endswith("(val split)")}
        chosen = vals[source]
        assert chosen["chosen"] and all(chosen["accuracy"] >= c["accuracy"] for c in vals.values())
        assert ("quantization-aware" in r["settings"]["int8_method"]) == (source == "qat")
        assert any(float(np.mean(w == 0)) > 0.5 for w in conv_weights(out / "model.onnx"))
    else:
        assert any("no candidate was both faithful and faster" in n for n in r["notes"])


def test_qat_can_be_switched_off_and_bad_values_are_refused(
    image_data: Path, cnn_checkpoint: Path, tmp_path: Path
):
    out = tmp_path / "off"
    proc = _run(image_data, cnn_checkpoint, out, "0.2", {"qat": False})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = report(out)
    assert "qat" not in [e["phase"] for e in r["training"]]
    assert not any(c["name"].startswith("qat: ") for c in r["candidates"])

    bad = tmp_path / "bad"
    proc = _run(image_data, cnn_checkpoint, bad, "0.5", {"qat": "sometimes"})
    assert proc.returncode == 2
    assert "recipe 'qat' must be auto, true or false" in proc.stderr
    assert not bad.exists() or not any(bad.iterdir())
