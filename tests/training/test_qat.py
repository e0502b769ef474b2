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
from sparsify_runner.cpu_features import int8_saturates, saturates_without_vnni
from sparsify_runner.modifiers.training.qat import FakeQuantModifier, fake_quant_weight
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


def test_weight_grid_follows_reduce_range():
    w = torch.randn(6, 3, 3, 3)
    q = fake_quant_weight(w, qmax=64)
    steps = q / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 64)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and float(steps.abs().max()) <= 64 + 1e-3


@pytest.mark.parametrize(
    ("machine", "flags", "saturates"),
    [
        ("x86_64", "fpu sse2 avx2 fma", True),  # AVX2 without VNNI
        ("x86_64", "avx2 avx512f avx512bw", True),  # AVX-512 without VNNI still uses vpmaddubsw
        ("x86_64", "avx2 avx512f avx512_vnni", False),
        ("x86_64", "avx2 avx_vnni", False),
        ("aarch64", "fp asimd", False),
    ],
)
def test_saturation_detection_from_cpu_flags(machine: str, flags: str, saturates: bool):
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n"
    assert saturates_without_vnni(machine, cpuinfo) is saturates


def test_saturation_override(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SPARSIFY_INT8_SATURATES", "1")
    assert int8_saturates("cpu") is True
    monkeypatch.setenv("SPARSIFY_INT8_SATURATES", "0")
    assert int8_saturates("cpu") is False
    monkeypatch.delenv("SPARSIFY_INT8_SATURATES")
    assert int8_saturates("cuda") is False


# Full 8-bit weights are what onnxruntime computes only where u8s8 does not saturate; 7-bit
# (reduce_range) weights are exact on every CPU. The product simulates whichever it will build.
@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit-weights", "reduce-range"])
def test_simulation_matches_onnxruntime_static_int8(tmp_path: Path, reduce_range: bool):
    """The fake-quantized model is far closer to onnxruntime's QDQ INT8 than FP32 is."""
    if not reduce_range and int8_saturates("cpu"):
        pytest.skip("this CPU has no VNNI: onnxruntime saturates u8s8 with 8-bit weights, so the "
                    "product builds (and simulates) reduce_range weights here")
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
        reduce_range=reduce_range,
    )
    runtime = ort.InferenceSession(str(int8_path)).run(None, {"input": test.numpy()})[0]
    with torch.no_grad():
        fp32 = model(test).numpy()
        ranges = _fp32_minmax(model, calib)
        fq = FakeQuantModifier(reduce_range=reduce_range)
        fq.install(model)
        model.train()
        model(calib)  # creates the observers
        model.eval()
        for key, (low, high) in ranges.items():  # MinMax calibration of the FP32 model, as onnxruntime's
            fq.observers[key].low.fill_(low)
            fq.observers[key].high.fill_(high)
        simulated = model(test).numpy()
    # measured: 0.04x (8-bit weights) and 0.05x (reduce_range) of FP32's distance to the INT8 model
    assert np.abs(simulated - runtime).mean() < 0.2 * np.abs(fp32 - runtime).mean()


def _fp32_minmax(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """min/max of every Conv/Linear input and of the logits in the plain FP32 model."""
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str):
        return lambda module, args: ranges.__setitem__(name, (float(args[0].min()), float(args[0].max())))

    hooks = [
        m.register_forward_pre_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    logits = model(x)
    for hook in hooks:
        hook.remove()
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    ranges[f"{head}:output"] = (float(logits.min()), float(logits.max()))
    return ranges


FAST = {"epochs": 4, "batch_size": 8, "checkpoint_every": 3}


def _run(
    image_data: Path,
    cnn_checkpoint: Path,
    out: Path,
    level: str,
    recipe_args: dict | None = None,
    env: dict | None = None,
):
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
    return sparsifyctl(*args, env=env)


@pytest.mark.parametrize("saturating_cpu", [False, True], ids=["vnni", "no-vnni"])
@pytest.mark.slow
def test_training_aware_compares_static_int8_with_qat(
    image_data: Path, cnn_checkpoint: Path, tmp_path: Path, saturating_cpu: bool
):
    out = tmp_path / "out"
    # a loose accuracy budget and no speed floor: both INT8 routes are measured on val
    proc = _run(
        image_data,
        cnn_checkpoint,
        out,
        "0.5",
        {"max_int8_accuracy_drop": 1.0, "qat_epochs": 2},
        env={"SPARSIFY_INT8_SATURATES": "1" if saturating_cpu else "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = report(out)
    qat_int8 = [c["name"] for c in r["candidates"] if c["name"].startswith("qat: int8-")]
    # without VNNI the QAT model is tuned for, and built on, onnxruntime's reduce_range grid
    assert qat_int8 and all(("reduce-range" in n) for n in qat_int8) == saturating_cpu, qat_int8
    assert any("QAT simulated reduce_range" in n for n in r["notes"]) == saturating_cpu
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


@pytest.mark.slow
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
    assert "recipe setting 'qat' must be auto, true or false, got 'sometimes'" in proc.stderr
    assert not bad.exists() or not any(bad.iterdir())
