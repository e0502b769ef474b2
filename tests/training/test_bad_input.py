"""Bad input: one clear line on stderr, exit 2, before any training, nothing published."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_imagefolder, make_text_data, sparsifyctl, sparsifyctl_in_process


def _check(code: int, stderr: str, out: Path, expected: tuple[str, ...]) -> None:
    assert code == 2, stderr[-2000:]
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), "bad input must not write to the output"


def _bad_subprocess(args: list[str], out: Path, *expected: str) -> None:
    """The real process: exit status and stderr as a shell sees them."""
    proc = sparsifyctl(*args, "-o", str(out), "--quiet", timeout=120)
    _check(proc.returncode, proc.stderr, out, expected)


@pytest.fixture
def bad(capsys):
    """The same checks through the CLI's function in this process (no start-up cost)."""

    def check(args: list[str], out: Path, *expected: str) -> None:
        code, stderr = sparsifyctl_in_process([*args, "-o", str(out), "--quiet"], capsys)
        _check(code, stderr, out, expected)

    return check


def _ic(model: Path, data: Path, *extra: str) -> list[str]:
    return [
        "run",
        "training-aware",
        "--use-case",
        "image-classification",
        "--model",
        str(model),
        "--data",
        str(data),
        *extra,
    ]


def test_unknown_architecture(image_data, tmp_path, bad):
    sd = tmp_path / "sd.pt"
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.save(EXTRA_ARCHS["simple_cnn"]().state_dict(), sd)
    bad(_ic(sd, image_data, "--arch", "resnet1888"), tmp_path / "o", "unknown architecture 'resnet1888'")


def test_state_dict_does_not_match_architecture(image_data, cnn_checkpoint, tmp_path, bad):
    bad(_ic(cnn_checkpoint, image_data, "--arch", "resnet18"), tmp_path / "o", "does not match", "resnet18")


def test_bare_state_dict_without_arch(image_data, tmp_path, bad):
    sd = tmp_path / "sd.pt"
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.save(EXTRA_ARCHS["simple_cnn"]().state_dict(), sd)
    bad(_ic(sd, image_data), tmp_path / "o", "--arch")


def test_pickled_objects_are_refused(image_data, tmp_path):
    evil = tmp_path / "evil.pt"
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.save(EXTRA_ARCHS["simple_cnn"](), evil)  # a whole pickled module
    _bad_subprocess(_ic(evil, image_data), tmp_path / "o", "pickled objects")


def test_data_without_train_val(cnn_checkpoint, tmp_path, bad):
    data = tmp_path / "flat"
    (data / "cats").mkdir(parents=True)
    bad(_ic(cnn_checkpoint, data), tmp_path / "o", "no 'train' subfolder")


def test_image_classes_differ(cnn_checkpoint, tmp_path, bad):
    data = make_imagefolder(tmp_path / "d", per_class_train=2, per_class_val=1)
    shutil.rmtree(data / "val" / "blue")
    bad(_ic(cnn_checkpoint, data), tmp_path / "o", "classes differ", "blue")


def test_unknown_train_kwargs(image_data, cnn_checkpoint, tmp_path, bad):
    bad(_ic(cnn_checkpoint, image_data, "--train-kwargs", '{"epocs": 3}'), tmp_path / "o", "epocs")


def _tc(model: Path, data: Path) -> list[str]:
    return [
        "run",
        "training-aware",
        "--use-case",
        "text-classification",
        "--model",
        str(model),
        "--data",
        str(data),
    ]


def test_label_column_missing(tiny_bert, tmp_path, bad):
    data = tmp_path / "t"
    data.mkdir()
    for split in ("train", "val"):
        (data / f"{split}.csv").write_text("sentence,target\ngood film,1\nbad film,0\n", encoding="utf-8")
    bad(_tc(tiny_bert, data), tmp_path / "o", "no 'label' column")


def test_text_not_utf8(tiny_bert, tmp_path, bad):
    data = make_text_data(tmp_path / "t")
    (data / "train.csv").write_bytes("sentence,label\ncaf\xe9 ok,1\nbad,0\n".encode("latin-1"))
    bad(_tc(tiny_bert, data), tmp_path / "o", "not UTF-8", "train.csv")


def test_text_classes_differ(tiny_bert, tmp_path, bad):
    data = make_text_data(tmp_path / "t", fmt="jsonl")
    with open(data / "val.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"sentence": "meh", "label": "neutral"}) + "\n")
    bad(_tc(tiny_bert, data), tmp_path / "o", "classes differ", "neutral")


def test_text_missing_val_split(tiny_bert, tmp_path, bad):
    data = make_text_data(tmp_path / "t")
    (data / "val.csv").unlink()
    bad(_tc(tiny_bert, data), tmp_path / "o", "no val file")


def test_text_model_not_a_hf_folder(text_data, cnn_checkpoint, tmp_path, bad):
    bad(_tc(cnn_checkpoint, text_data), tmp_path / "o", "not a Hugging Face model folder")


def test_sparse_transfer_without_model_or_catalog(image_data, tmp_path, bad):
    bad(
        ["run", "sparse-transfer", "--use-case", "ic", "--data", str(image_data)], tmp_path / "o", "--catalog"
    )


@pytest.mark.parametrize("recipe_args", ['{"sparsty": 0.9}'])
def test_unknown_recipe_key(image_data, cnn_checkpoint, tmp_path, recipe_args, bad):
    bad(_ic(cnn_checkpoint, image_data, "--recipe-args", recipe_args), tmp_path / "o", "sparsty")
