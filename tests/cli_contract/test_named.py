"""Named models (``--model mobilenet_v2``, ``--model org/name``) through torchvision's and
Hugging Face's own caches, offline, with real cached weight files; and the one-line
failures when the cache is empty or the architecture has no pathway here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import (
    MINILM_ID,
    ONESHOT_FAST,
    TRAIN_FAST,
    TRAIN_RECIPE_FAST,
    assert_bad,
    report,
    run_cli,
    write_npz,
)


def test_one_shot_named_torchvision_model_is_exported_with_static_shape(
    torch_home, offline, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    calib = write_npz(tmp_path / "calib", 6, (3, 224, 224), "input")
    out = tmp_path / "out"
    code, _, err = run_cli(
        [
            "run",
            "one-shot",
            "--use-case",
            "image_classification",
            "--model",
            "mobilenet_v2",
            "--data",
            str(calib),
            "--optim-level",
            "0",
            "--recipe-args",
            json.dumps(ONESHOT_FAST),
            "-o",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    r = report(out)
    assert r["experiment"]["model"] == "mobilenet_v2" and r["mode"] == "baseline"
    model = onnx.load(str(out / "model.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert model.graph.input[0].name == "input" and dims == [1, 3, 224, 224]
    # the exported graph computes torchvision's pretrained MobileNetV2 (the cached weights)
    import torchvision

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(
        torch.load(torch_home / "hub/checkpoints/mobilenet_v2-b0353104.pth", weights_only=True)
    )
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = net.eval()(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x})[0]
    assert np.allclose(got, expected, atol=1e-3)


def test_training_aware_named_torchvision_model(
    torch_home, offline, monkeypatch, image_data, tmp_path, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    out = tmp_path / "out"
    code, _, err = run_cli(
        [
            "run",
            "training-aware",
            "--use-case",
            "ic",
            "--model",
            "mobilenet_v2",
            "--data",
            str(image_data),
            "--optim-level",
            "0",
            "--train-kwargs",
            json.dumps({**TRAIN_FAST, "image_size": 32}),
            "--recipe-args",
            json.dumps(TRAIN_RECIPE_FAST),
            "-o",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    r = report(out)
    assert r["settings"]["arch"] == "mobilenet_v2"
    assert any("classifier head" in n and "1000 classes" in n for n in r["notes"]), r["notes"]
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["arch_key"] == "mobilenet_v2" and ckpt["state_dict"]["classifier.1.weight"].shape[0] == 3
    # the backbone started from the cached ImageNet weights (the first conv is not re-initialized)
    cached = torch.load(torch_home / "hub/checkpoints/mobilenet_v2-b0353104.pth", weights_only=True)
    assert torch.allclose(ckpt["state_dict"]["features.0.0.weight"], cached["features.0.0.weight"], atol=0.05)


def test_named_torchvision_model_offline_without_cache_names_the_file(
    offline, monkeypatch, image_data, tmp_path, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    line = assert_bad(
        [
            "run",
            "training-aware",
            "--use-case",
            "ic",
            "--model",
            "resnet50",
            "--data",
            str(image_data),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "not in torchvision's cache",
        str(tmp_path / "empty-torch-home" / "hub" / "checkpoints" / "resnet50-"),
        out=tmp_path / "o",
    )
    assert "download.pytorch.org" in line


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_detection_architecture_name_says_there_is_no_detection_pathway(arch, image_data, tmp_path, capsys):
    assert_bad(
        [
            "run",
            "one-shot",
            "--use-case",
            "od",
            "--model",
            arch,
            "--data",
            str(image_data),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        f"'{arch}' names a torchvision detection architecture",
        "detectors are not fetched by name",
        out=tmp_path / "o",
    )


def test_local_path_wins_over_a_name(tmp_path, image_data, capsys, monkeypatch):
    """A missing file shaped like a path is not a name: the ordinary 'does not exist' line."""
    monkeypatch.chdir(tmp_path)
    assert_bad(
        [
            "run",
            "training-aware",
            "--use-case",
            "ic",
            "--model",
            "resnet50.pt",
            "--data",
            str(image_data),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "model 'resnet50.pt' does not exist",
    )


def test_training_aware_named_hugging_face_model_from_the_hub_cache(
    hf_home, offline, monkeypatch, text_csv, tmp_path, capsys
):
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    out = tmp_path / "out"
    code, _, err = run_cli(
        [
            "run",
            "training-aware",
            "--use-case",
            "sentiment-analysis",
            "--model",
            MINILM_ID,
            "--data",
            str(text_csv),
            "--optim-level",
            "0",
            "--train-kwargs",
            json.dumps({**TRAIN_FAST, "max_length": 16}),
            "--recipe-args",
            json.dumps(TRAIN_RECIPE_FAST),
            "-o",
            str(out),
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    r = report(out)
    assert r["settings"]["arch"] == "BertModel" and r["settings"]["classes"] == 2
    assert r["experiment"]["model"] == MINILM_ID
    sess = ort.InferenceSession(str(out / "model.onnx"))
    assert {i.name for i in sess.get_inputs()} >= {"input_ids", "attention_mask"}
    assert (out / "model-hf.tar").is_file()


def test_named_hugging_face_model_offline_without_cache_names_the_entry(
    offline, monkeypatch, text_csv, tmp_path, capsys
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert_bad(
        [
            "run",
            "training-aware",
            "--use-case",
            "text-classification",
            "--model",
            "bert-base-uncased",
            "--data",
            str(text_csv),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "not in the Hugging Face cache",
        str(Path(tmp_path / "empty-hf" / "hub" / "models--bert-base-uncased")),
        out=tmp_path / "o",
    )


def test_one_shot_with_a_hugging_face_id_asks_for_an_onnx_file(tmp_path, text_csv, capsys):
    assert_bad(
        [
            "run",
            "one-shot",
            "--use-case",
            "nlp-text_classification",
            "--model",
            "bert-base-uncased",
            "--data",
            str(text_csv),
            "-o",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
        "one-shot needs an ONNX file",
        "Hugging Face model id",
    )
