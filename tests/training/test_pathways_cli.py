"""End to end through the real CLIs: each pathway, each use case, structured mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import runner, sparsifyctl
from helpers import conv_macs, conv_weights, report

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow

FAST = json.dumps({"epochs": 4, "batch_size": 8, "checkpoint_every": 3})


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_training_aware_image_unstructured(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(cnn_checkpoint),
        "--data",
        str(image_data),
        "--optim-level",
        "0.5",
        "--train-kwargs",
        FAST,
        "-o",
        str(out),
        "--quiet",
    )
    _ok(proc)
    r = report(out)
    assert r["mode"] == "unstructured"
    assert (out / "model.onnx").is_file() and (out / "model.pt").is_file()
    assert not (out / ".sparsify-checkpoints").exists()
    # dense fine-tune (new head), the pruning phase, then quantization-aware fine-tuning
    assert [e["phase"] for e in r["training"]] == ["dense"] * 2 + ["main"] * 4 + ["qat"]
    assert r["training"][-1]["sparsity"] > 0.5  # QAT holds the zeros
    assert r["settings"]["int8_source"] in ("ptq", "qat", None)
    assert r["baseline"]["accuracy"] is not None and r["optimized"]["accuracy"] is not None
    assert r["baseline"]["latency"]["mean_ms"] > 0 and r["speedup"] > 0
    assert r["layers"]
    assert "unstructured sparsity" in r["speedup_source"]
    target = r["settings"]["target_sparsity"]
    assert target == pytest.approx(0.6 + (0.5 - 0.3) / 0.7 * 0.35, abs=1e-6)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    convs = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.dim() == 4][1:]
    assert all(float((w == 0).float().mean()) == pytest.approx(target, abs=0.03) for w in convs)
    # the ONNX runs and keeps the zeros
    sess = ort.InferenceSession(str(out / "model.onnx"))
    x = np.random.rand(2, 3, 32, 32).astype(np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (2, 3)
    assert any(float(np.mean(w == 0)) > 0.5 for w in conv_weights(out / "model.onnx"))


def test_training_aware_image_channels_reduces_macs(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "ic",
        "--model",
        str(cnn_checkpoint),
        "--data",
        str(image_data),
        "--optim-level",
        "0.8",
        "--structure",
        "channels",
        "--train-kwargs",
        FAST,
        "--recipe-args",
        '{"quantize": false}',
        "-o",
        str(out),
        "--quiet",
    )
    _ok(proc)
    r = report(out)
    assert r["mode"] == "channels"
    assert "MACs per sample" in r["speedup_source"]
    assert r["optimized"]["flops"] < 0.6 * r["baseline"]["flops"]
    assert any("structured" in (layer.get("note") or "") for layer in r["layers"])
    # measured on the exported graph itself, independent of the report
    exp_dir = tmp_path / "dense"
    _ok(
        sparsifyctl(
            "run",
            "training-aware",
            "--use-case",
            "ic",
            "--model",
            str(cnn_checkpoint),
            "--data",
            str(image_data),
            "--optim-level",
            "0",
            "--train-kwargs",
            FAST,
            "-o",
            str(exp_dir),
            "--quiet",
        )
    )
    assert conv_macs(out / "model.onnx") < 0.6 * conv_macs(exp_dir / "model.onnx")
    assert report(exp_dir)["mode"] == "baseline"
    # the structured model.pt reloads (shapes kept as plain data) and seeds sparse-transfer
    st_out = tmp_path / "st"
    _ok(
        sparsifyctl(
            "run",
            "sparse-transfer",
            "--use-case",
            "ic",
            "--model",
            str(out / "model.pt"),
            "--data",
            str(image_data),
            "--optim-level",
            "0",
            "--train-kwargs",
            '{"epochs": 1}',
            "-o",
            str(st_out),
            "--quiet",
        )
    )
    assert report(st_out)["mode"] == "channels"


def test_sparse_transfer_image_mask_stays_fixed(image_data: Path, tmp_path: Path):
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(3)
    model = EXTRA_ARCHS["simple_cnn"](num_classes=3)
    masks = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() in (2, 4):
            masks[name] = torch.rand_like(p) > 0.7  # keep 30%
            p.data.mul_(masks[name])
    sparse = tmp_path / "sparse.pt"
    torch.save(model.state_dict(), sparse)
    out = tmp_path / "out"
    proc = runner(
        "run",
        "--quiet",
        "--experiment",
        json.dumps(
            {
                "type": "sparse-transfer",
                "useCase": "image-classification",
                "model": str(sparse),
                "arch": "simple_cnn",
                "data": str(image_data),
                "optimLevel": 0.5,
                "output": str(out),
                "trainKwargs": {"epochs": 3, "batch_size": 8, "lr": 0.01, "weight_decay": 0.05},
            }
        ),
    )
    _ok(proc)
    r = report(out)
    assert r["mode"] == "unstructured"
    trained = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    changed = False
    for name, mask in masks.items():
        assert torch.all(trained[name][~mask] == 0), f"{name}: a pruned weight came back"
        changed |= not torch.allclose(trained[name][mask], model.state_dict()[name][mask])
    assert changed, "fine-tuning did not update the kept weights"
    # exported ONNX (INT8 or FP32): every conv keeps at least the mask's zeros
    conv_masks = [m for n, m in masks.items() if m.dim() == 4]
    onnx_convs = conv_weights(out / "model.onnx")
    assert len(onnx_convs) == len(conv_masks)
    for w, mask in zip(onnx_convs, conv_masks, strict=True):
        assert np.all(w[~mask.numpy()] == 0)


def test_text_training_aware_and_sparse_transfer(tiny_bert: Path, text_data: Path, tmp_path: Path):
    out = tmp_path / "ta"
    kwargs = json.dumps({"epochs": 3, "batch_size": 8, "lr": 0.002, "dense_epochs": 2})
    proc = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "sentiment-analysis",
        "--model",
        str(tiny_bert),
        "--data",
        str(text_data),
        "--optim-level",
        "0.4",
        "--train-kwargs",
        kwargs,
        "-o",
        str(out),
        "--quiet",
    )
    _ok(proc)
    r = report(out)
    assert r["mode"] == "unstructured" and (out / "model-hf.tar").is_file()
    assert r["optimized"]["accuracy"] is not None
    assert [e["phase"] for e in r["training"]] == ["dense"] * 2 + ["main"] * 3 + ["qat"]
    assert r["settings"]["torch_sparsity"] > 0.4
    # the result is a pre-sparsified model: sparse-transfer from it keeps its zeros
    st = tmp_path / "st"
    proc = sparsifyctl(
        "run",
        "sparse-transfer",
        "--use-case",
        "text-classification",
        "--model",
        str(out / "model-hf.tar"),
        "--data",
        str(text_data),
        "--optim-level",
        "0",
        "--train-kwargs",
        '{"epochs": 2, "lr": 0.002}',
        "-o",
        str(st),
        "--quiet",
    )
    _ok(proc)
    rs = report(st)
    assert rs["mode"] == "unstructured"
    assert rs["settings"]["torch_sparsity"] >= rs["settings"]["base_sparsity"] - 1e-6


def test_text_channels_jsonl(tiny_bert: Path, tmp_path: Path):
    from conftest import make_text_data

    data = make_text_data(tmp_path / "jsonl", fmt="jsonl")
    out = tmp_path / "out"
    proc = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "text-classification",
        "--model",
        str(tiny_bert),
        "--data",
        str(data),
        "--optim-level",
        "0.6",
        "--structure",
        "channels",
        "--train-kwargs",
        '{"epochs": 2, "batch_size": 8, "dense_epochs": 1}',
        "-o",
        str(out),
        "--quiet",
    )
    _ok(proc)
    r = report(out)
    assert r["mode"] == "channels"
    assert r["optimized"]["flops"] < r["baseline"]["flops"]
    assert r["settings"]["torch_parameters"] < 60000
    st = tmp_path / "st"
    _ok(
        sparsifyctl(
            "run",
            "sparse-transfer",
            "--use-case",
            "text-classification",
            "--model",
            str(out / "model-hf.tar"),
            "--data",
            str(data),
            "--optim-level",
            "0.5",
            "--train-kwargs",
            '{"epochs": 1}',
            "-o",
            str(st),
            "--quiet",
        )
    )
    rs = report(st)
    assert rs["mode"] == "channels"
    assert rs["settings"]["torch_parameters"] == r["settings"]["torch_parameters"]


def _simple_cnn_checkpoint(path: Path, num_classes: int) -> Path:
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(1)
    model = EXTRA_ARCHS["simple_cnn"](num_classes=num_classes)
    torch.save({"state_dict": model.state_dict(), "arch_key": "simple_cnn"}, path)
    return path


def test_training_aware_distills_from_teacher(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    teacher = _simple_cnn_checkpoint(tmp_path / "teacher.pt", num_classes=3)  # head fits the 3 classes
    out = tmp_path / "out"
    proc = sparsifyctl(
        "run", "training-aware", "--use-case", "image-classification", "--model", str(cnn_checkpoint),
        "--teacher", str(teacher), "--data", str(image_data), "--optim-level", "0.3",
        "--train-kwargs", json.dumps({"epochs": 2, "batch_size": 8}), "-o", str(out), "--quiet",
    )
    _ok(proc)
    notes = " ".join(report(out)["notes"])
    assert f"distillation teacher: {teacher}" in notes
    assert "also the distillation teacher" not in notes


def test_teacher_without_matching_head_is_bad_input(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = sparsifyctl(
        "run", "training-aware", "--use-case", "image-classification", "--model", str(cnn_checkpoint),
        "--teacher", str(cnn_checkpoint), "--data", str(image_data), "--optim-level", "0.3",
        "-o", str(out), "--quiet",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "teacher" in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unstructured_keeps_depthwise_convs_dense(image_data: Path, tmp_path: Path):
    """Depthwise convs (~9 weights per channel) are not masked unless prune_depthwise is set."""
    import torchvision

    torch.manual_seed(0)
    checkpoint = tmp_path / "mnv2.pt"
    model = torchvision.models.mobilenet_v2(num_classes=3)
    torch.save({"state_dict": model.state_dict(), "arch_key": "mobilenet_v2"}, checkpoint)
    out = tmp_path / "out"
    proc = sparsifyctl(
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(checkpoint),
        "--data",
        str(image_data),
        "--optim-level",
        "0.8",
        "--train-kwargs",
        json.dumps({"epochs": 2, "batch_size": 10, "image_size": 32}),
        "--recipe-args",
        json.dumps({"quantize": False}),
        "-o",
        str(out),
        "--quiet",
    )
    _ok(proc)
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    depthwise = {n + ".weight" for n, m in model.named_modules() if getattr(m, "groups", 1) > 1}
    assert depthwise
    for key, w in state.items():
        if key in depthwise:
            assert float((w == 0).float().mean()) == 0.0, key
    pointwise = [w for k, w in state.items() if k.endswith("weight") and w.dim() == 4 and k not in depthwise]
    assert max(float((w == 0).float().mean()) for w in pointwise) > 0.8
