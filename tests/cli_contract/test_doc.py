"""docs/coming-from-sparsify.md: every ``sparsifyctl`` command on the page runs, on tiny local
data and models laid out under the names the page uses, with settings that make training
take seconds (the only things added: --quiet, fast train/recipe settings, no INT8 step after
training, an output folder when the command names none)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    ONESHOT_FAST,
    TRAIN_FAST,
    TRAIN_RECIPE_FAST,
    make_imagefolder,
    report,
    run_cli,
    sentences,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "coming-from-sparsify.md"
QUICK_START = [
    ("one-shot", "image_classification", "./model.onnx"),
    ("one-shot", "nlp-text_classification", None),
    ("sparse-transfer", "image-classification", None),
    ("training-aware", "image_classification", "resnet50"),
]


def doc_commands() -> list[tuple[str, list[str]]]:
    """(original command, sparsifyctl argv) pairs from the page's bash blocks."""
    pairs = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        lines = [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
        for original, command in zip(lines, lines[1:], strict=False):
            if original.startswith("# sparsify.run "):
                assert command.startswith("sparsifyctl "), f"no sparsifyctl command after: {original}"
                pairs.append((original[2:], shlex.split(command)[1:]))
    return pairs


def test_the_page_maps_the_original_quick_start():
    originals = [shlex.split(o) for o, _ in doc_commands()]
    for kind, use_case, model in QUICK_START:
        assert any(
            o[1] == kind and o[o.index("--use-case") + 1] == use_case and (model is None or model in o)
            for o in originals
        ), (kind, use_case, model)
    flags = {t for o in originals for t in o if t.startswith("--")}
    assert {"--train-kwargs", "--working-dir", "--optim-level", "--eval-metric"} <= flags


def _option(argv: list[str], flag: str) -> int | None:
    return argv.index(flag) if flag in argv else None


def _fast(argv: list[str], out: Path) -> list[str]:
    argv = list(argv)
    training = argv[1] != "one-shot"
    extra = TRAIN_FAST if training else {}
    i = _option(argv, "--train-kwargs")
    if training:
        if i is None:
            argv += ["--train-kwargs", json.dumps(extra)]
        else:
            argv[i + 1] = json.dumps({**json.loads(argv[i + 1]), **extra})
    # INT8 of the trained models is covered by tests/training; here it would only add minutes
    recipe = {**TRAIN_RECIPE_FAST, "quantize": False} if training else ONESHOT_FAST
    i = _option(argv, "--recipe-args")
    if i is None:
        argv += ["--recipe-args", json.dumps(recipe)]
    else:
        argv[i + 1] = json.dumps({**json.loads(argv[i + 1]), **recipe})
    if (
        _option(argv, "--working-dir") is None
        and _option(argv, "-o") is None
        and _option(argv, "--output") is None
    ):
        argv += ["-o", str(out)]
    return [*argv, "--quiet"]


def _text_onnx(bert: Path, path: Path, length: int = 16) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(bert), num_labels=2).eval()
    model.config._attn_implementation = "eager"

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.ones(1, length, dtype=torch.long)
    torch.onnx.export(
        Logits(),
        (ids, ids),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_onnx, calib, tiny_bert, image_data, torch_home) -> Path:
    """The files the page's commands name, under those names."""
    import datasets
    import torch
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    ws = tmp_path_factory.mktemp("workspace")
    shutil.copy(tiny_onnx, ws / "model.onnx")
    shutil.copytree(calib, ws / "calib")
    shutil.copytree(image_data, ws / "imagefolder")
    shutil.copytree(tiny_bert, ws / "bert")
    _text_onnx(tiny_bert, ws / "text-model.onnx")
    rng = np.random.default_rng(0)
    (ws / "text-calib").mkdir()
    for i in range(12):
        ids = rng.integers(5, 20, 16).astype(np.int64)
        np.savez(
            ws / "text-calib" / f"{i}.npz",
            input_ids=ids,
            attention_mask=np.ones(16, np.int64),
            label=np.int64(i % 2),
        )
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    parts = {}
    for split, n, seed in (("train", 24, 1), ("validation", 8, 2)):
        rows = sentences(n, seed)
        parts[split] = datasets.Dataset.from_dict(
            {"sentence": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features
        )
    datasets.DatasetDict(parts).save_to_disk(str(ws / "sst2"))
    torch.manual_seed(0)
    torch.save(
        {"state_dict": EXTRA_ARCHS["simple_cnn"](num_classes=10).state_dict(), "arch_key": "simple_cnn"},
        ws / "cnn.pt",
    )
    (ws / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "models": [
                    {
                        "name": "cnn",
                        "useCase": "image-classification",
                        "uri": "cnn.pt",
                        "parameters": 30000,
                        "sparsity": 0.0,
                        "accuracy": 0.9,
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    make_imagefolder(ws / "datasets" / "imagenette2-160")
    return ws


@pytest.mark.parametrize(("original", "argv"), doc_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_doc_command_runs(original, argv, workspace, torch_home, monkeypatch, offline, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("SPARSIFY_DATASETS", str(workspace / "datasets"))
    out = workspace / f"out-{abs(hash(original))}"
    full = _fast(argv, out)
    code, _, err = run_cli(full, capsys)
    assert code == 0, f"{' '.join(full)}\n{err}"
    i = _option(full, "--working-dir")
    if i is not None:
        out = Path(full[i + 1]) / full[full.index("--name") + 1]
    r = report(out)
    assert (out / "model.onnx").is_file()
    assert r["experiment"]["type"] == argv[1]
    level = float(argv[argv.index("--optim-level") + 1])
    assert r["experiment"]["optimLevel"] == pytest.approx(level if level <= 1 else level / 100)
