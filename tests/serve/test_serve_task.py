"""``--task``: the pathways store preprocessing and class names with the model, and the
server turns an image file or a sentence into the same tensors the training used."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import requests
from sparsify_runner import model_card
from sparsify_runner.serve.task import softmax

from .conftest import (
    cnn_checkpoint,
    linear_onnx,
    make_imagefolder,
    make_text_data,
    run_main,
    serving,
    tiny_bert,
)

FAST_TRAIN = json.dumps({"epochs": 1, "batch_size": 4})
FAST_RECIPE = json.dumps(
    {"benchmark_seconds": 0.1, "int8_search_seconds": 5, "int8_candidate_seconds": 0.05, "qat": False}
)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A real training-aware run (INT8 only, 1 epoch, 12 images): its output folder."""
    root = tmp_path_factory.mktemp("serve-img")
    data = make_imagefolder(root / "data")
    out = root / "out"
    code = run_main(
        [
            "run",
            "training-aware",
            "--use-case",
            "image-classification",
            "--model",
            str(cnn_checkpoint(root / "cnn.pt")),
            "--data",
            str(data),
            "--optim-level",
            "0.2",
            "--train-kwargs",
            FAST_TRAIN,
            "--recipe-args",
            FAST_RECIPE,
            "--name",
            "colors",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return data, out


def _reference_probs(model_path, image_path, size: int) -> np.ndarray:
    """The training's own val transform (torchvision) + onnxruntime, outside the server."""
    import torch
    from PIL import Image
    from sparsify_runner.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
    from torchvision import transforms

    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    with Image.open(image_path) as img:
        x = tf(img.convert("RGB")).unsqueeze(0)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return softmax(logits)[0]


def test_training_aware_run_stores_the_serving_card(image_run):
    _, out = image_run
    card = model_card.read(out / "model.onnx")
    assert card is not None and card.use_case == "image-classification"
    assert card.classes == ["blue", "green", "red"]  # ImageFolder order: sorted folder names
    assert card.inputs == ["input"] and card.output == "logits"
    assert (card.image.height, card.image.width) == (32, 32)  # 12-pixel images -> the default 32
    assert card.image.mean == pytest.approx([0.485, 0.456, 0.406])
    assert card.image.std == pytest.approx([0.229, 0.224, 0.225])
    assert json.loads((out / "_SUCCESS.json").read_text())["files"]["model.onnx"]["size"] > 0


def test_predict_image_matches_training_preprocessing(image_run):
    data, out = image_run
    image = data / "val" / "red" / "0.png"
    reference = _reference_probs(out / "model.onnx", image, 32)
    with serving(out, task="image-classification") as server:
        assert server.name == "colors"
        url = f"{server.url}/predict"
        r = requests.post(url, files={"file": image.read_bytes()}, params={"top_k": 3}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "colors" and body["task"] == "image-classification"
        top = body["predictions"][0]
        assert [p["label"] for p in top] == [["blue", "green", "red"][i] for i in np.argsort(-reference)]
        for p in top:
            assert p["score"] == pytest.approx(float(reference[p["index"]]), abs=1e-4)
        # two files at once, and a raw image body
        two = [
            ("file", ("a.png", image.read_bytes())),
            ("file", ("b.png", (data / "val/blue/1.png").read_bytes())),
        ]
        r = requests.post(url, files=two, params={"top_k": 1}, timeout=60)
        assert r.status_code == 200 and [len(p) for p in r.json()["predictions"]] == [1, 1]
        raw = requests.post(url, data=image.read_bytes(), headers={"content-type": "image/png"}, timeout=60)
        assert raw.json()["predictions"][0][0]["label"] == top[0]["label"]
        # what a person gets wrong: one line, 400
        bad = requests.post(url, files={"file": b"not an image"}, timeout=60)
        assert bad.status_code == 400 and "not a readable image" in bad.json()["error"]
        empty = requests.post(url, data=b"", timeout=60)
        assert empty.status_code == 400 and "no image" in empty.json()["error"]
        # the protocol endpoint serves the same model
        meta = requests.get(f"{server.url}/v2/models/colors", timeout=30).json()
        assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]


def test_sparse_transfer_run_stores_the_card_too(image_run, tmp_path):
    """The training-aware result's model.pt as the base model of a sparse-transfer run."""
    data, first = image_run
    out = tmp_path / "st"
    argv = [
        "run",
        "sparse-transfer",
        "--use-case",
        "ic",
        "--model",
        str(first / "model.pt"),
        "--data",
        str(data),
    ]
    fast = ["--train-kwargs", FAST_TRAIN, "--recipe-args", FAST_RECIPE]
    code = run_main([*argv, "--optim-level", "0", *fast, "-o", str(out), "--quiet"])
    assert code == 0
    card = model_card.read(out / "model.onnx")
    assert card.use_case == "image-classification" and card.classes == ["blue", "green", "red"]
    with serving(out, task="ic") as server:
        r = requests.post(
            f"{server.url}/predict", files={"file": (data / "val/green/0.png").read_bytes()}, timeout=60
        )
        assert r.status_code == 200 and len(r.json()["predictions"][0]) == 3


def test_wrong_task_for_the_model_is_one_line(image_run, capsys):
    _, out = image_run
    code = run_main(["serve", str(out), "--task", "text-classification", "--port", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "was trained for image-classification" in err and len(err.splitlines()) == 1


def test_text_run_publishes_tokenizer_and_predicts(tmp_path):
    data = make_text_data(tmp_path / "texts")
    out = tmp_path / "out"
    code = run_main(
        [
            "run",
            "training-aware",
            "--use-case",
            "sentiment-analysis",
            "--model",
            str(tiny_bert(tmp_path / "bert")),
            "--data",
            str(data),
            "--optim-level",
            "0",
            "--train-kwargs",
            json.dumps({"epochs": 1, "batch_size": 8, "max_length": 16}),
            "--recipe-args",
            FAST_RECIPE,
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    card = model_card.read(out / "model.onnx")
    assert card.classes == ["neg", "pos"] and card.text.max_length == 16
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    texts = ["a very good film", "the plot was dull and boring"]
    enc = tok(texts, truncation=True, padding="max_length", max_length=16, return_tensors="np")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    reference = softmax(sess.run(None, feeds)[0])
    with serving(out, task="text-classification") as server:
        r = requests.post(f"{server.url}/predict", json={"texts": texts}, timeout=60)
        assert r.status_code == 200, r.text
        for row, preds in zip(reference, r.json()["predictions"], strict=True):
            assert preds[0]["label"] == ["neg", "pos"][int(np.argmax(row))]
            assert preds[0]["score"] == pytest.approx(float(row.max()), abs=1e-4)
        one = requests.post(f"{server.url}/predict", json={"text": texts[0]}, timeout=60).json()
        assert one["predictions"][0][0]["label"] == r.json()["predictions"][0][0]["label"]
        bad = requests.post(f"{server.url}/predict", json={"texts": [1, 2]}, timeout=60)
        assert bad.status_code == 400 and "list of strings" in bad.json()["error"]


def test_one_shot_carries_the_input_card_over(tmp_path):
    """A one-shot run on a model that has a card keeps it (same inputs, outputs, classes)."""
    card = model_card.ServingInfo(use_case="custom", inputs=["x"], output="y", classes=["a", "b", "c"])
    model = linear_onnx(
        tmp_path / "in.onnx", batch=1, metadata={model_card.METADATA_KEY: card.model_dump_json()}
    )
    samples = tmp_path / "calib"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        np.savez(samples / f"s{i}.npz", x=rng.standard_normal(4).astype(np.float32))
    out = tmp_path / "out"
    recipe = json.dumps({"benchmark_seconds": 0.1, "int8_candidate_seconds": 0.05, "int8_search_seconds": 5})
    argv = ["run", "one-shot", "--use-case", "custom", "--model", str(model), "--data", str(samples)]
    code = run_main([*argv, "--optim-level", "0.2", "--recipe-args", recipe, "-o", str(out), "--quiet"])
    assert code == 0
    # INT8 ships only if it measured faster; either way the returned model keeps the card
    assert json.loads((out / "report.json").read_text())["mode"] in ("baseline", "quantization-only")
    assert model_card.read(out / "model.onnx") == card
