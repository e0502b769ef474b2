"""Data as the original named it: Hugging Face ``datasets`` (a save_to_disk folder, a hub
id through the datasets cache with the GLUE name rewriting), ``imagenette``-style image
dataset names, column/split selection, and ``--train-samples`` / ``--val-samples``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TRAIN_FAST, TRAIN_RECIPE_FAST, assert_bad, make_imagefolder, report, run_cli, sentences

RECIPE = json.dumps(TRAIN_RECIPE_FAST)


def _dataset_dict(n_train: int = 24, n_val: int = 10):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )

    def part(n, seed):
        rows = sentences(n, seed)
        return datasets.Dataset.from_dict(
            {"sentence": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features
        )

    return datasets.DatasetDict({"train": part(n_train, 1), "validation": part(n_val, 2)})


@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hfdata") / "sst-like"
    _dataset_dict().save_to_disk(str(path))
    return path


def _text_run(model: Path, data: str, out: Path, capsys, *extra: str, kwargs: dict | None = None):
    return run_cli(
        [
            "run",
            "training-aware",
            "--use-case",
            "text-classification",
            "--model",
            str(model),
            "--data",
            data,
            "--optim-level",
            "0",
            "--train-kwargs",
            json.dumps({**TRAIN_FAST, "max_length": 16, **(kwargs or {})}),
            "--recipe-args",
            RECIPE,
            "-o",
            str(out),
            "--quiet",
            *extra,
        ],
        capsys,
    )


def test_save_to_disk_dataset_dict_with_sample_limits(tiny_bert, saved_dict, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _text_run(
        tiny_bert,
        str(saved_dict),
        out,
        capsys,
        "--train-samples",
        "8",
        "--val-samples",
        "4",
        kwargs={"batch_size": 4, "dense_epochs": 1},
    )
    assert code == 0, err
    r = report(out)
    assert r["settings"]["classes"] == 2
    assert (r["settings"]["train"]["max_train_samples"], r["settings"]["train"]["max_val_samples"]) == (8, 4)
    # 8 training samples in batches of 4: one epoch is 2 optimizer steps (24 would be 6)
    assert r["training"][-1]["step"] == 2, r["training"]
    assert r["baseline"]["accuracy"] * 4 == pytest.approx(round(r["baseline"]["accuracy"] * 4))


def test_single_dataset_with_column_selection_and_recall(tiny_bert, tmp_path, capsys):
    import datasets

    rows = sentences(30, 3)
    path = tmp_path / "reviews"
    datasets.Dataset.from_dict(
        {"id": list(range(30)), "review": [t for t, _ in rows], "stars": [5 if y else 1 for _, y in rows]}
    ).save_to_disk(str(path))
    out = tmp_path / "out"
    code, _, err = _text_run(
        tiny_bert,
        str(path),
        out,
        capsys,
        "--eval-metric",
        "recall",
        kwargs={"text_column": "review", "label_column": "stars"},
    )
    assert code == 0, err
    r = report(out)
    assert r["settings"]["classes"] == 2
    for side in ("baseline", "optimized"):
        assert 0.0 <= r[side]["recall"] <= 1.0 and 0.0 <= r[side]["f1"] <= 1.0


def test_dataset_bad_split_and_column_are_one_line(tiny_bert, saved_dict, tmp_path, capsys):
    base = [
        "run",
        "training-aware",
        "--use-case",
        "sentiment_analysis",
        "--model",
        str(tiny_bert),
        "--data",
        str(saved_dict),
        "-o",
        str(tmp_path / "o"),
        "--quiet",
        "--train-kwargs",
    ]
    assert_bad(
        [*base, '{"val_split": "dev"}'], capsys, "no split 'dev'", "train, validation", out=tmp_path / "o"
    )
    assert_bad([*base, '{"label_column": "stars"}'], capsys, "no label column 'stars'", out=tmp_path / "o")
    assert_bad([*base, '{"text_column": "body"}'], capsys, "no column(s) ['body']", out=tmp_path / "o")
    assert_bad([*base, '{"text_column": 3}'], capsys, "'text_column' must be a non-empty string")


def _subprocess(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from sparsifyctl.cli import main; main()", *args]
    full = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
    full.pop("HF_DATASETS_CACHE", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full)


def test_hub_dataset_id_offline_with_an_empty_cache_is_one_line(tiny_bert, tmp_path):
    out = tmp_path / "o"
    proc = _subprocess(
        [
            "run",
            "training-aware",
            "--use-case",
            "text-classification",
            "--model",
            str(tiny_bert),
            "--data",
            "sst2",
            "-o",
            str(out),
            "--quiet",
        ],
        {"HF_HOME": str(tmp_path / "hf")},
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "data 'glue/sst2' is not a local path and not in the datasets cache" in lines[0]
    assert str(tmp_path / "hf" / "datasets") in lines[0]
    assert not out.exists()


def test_hub_dataset_id_offline_cache_hit_with_glue_rewriting(tiny_bert, tmp_path):
    """The cache is prepared by the datasets library itself (a Parquet builder under the
    name and configuration the hub would use for glue/sst2); `--data sst2` then loads it
    offline, as the original rewrote `sst2` to ("glue", "sst2")."""
    import datasets
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig

    src = tmp_path / "parquet"
    src.mkdir()
    for split, part in _dataset_dict(20, 8).items():
        part.to_parquet(str(src / f"{split}.parquet"))
    files = DataFilesDict.from_local_or_remote(
        {"train": ["train.parquet"], "validation": ["validation.parquet"]}, base_path=str(src)
    )

    class Glue(Parquet):
        BUILDER_CONFIGS = [ParquetConfig(name="sst2", data_files=files)]

    cache = tmp_path / "hf" / "datasets"
    Glue(cache_dir=str(cache), dataset_name="glue", config_name="sst2", hash="0" * 40).download_and_prepare()
    assert datasets.load_from_disk  # the library used for both sides
    out = tmp_path / "out"
    proc = _subprocess(
        [
            "run",
            "training-aware",
            "--use-case",
            "glue",
            "--model",
            str(tiny_bert),
            "--data",
            "sst2",
            "--optim-level",
            "0",
            "--train-kwargs",
            json.dumps({**TRAIN_FAST, "max_length": 16}),
            "--recipe-args",
            RECIPE,
            "-o",
            str(out),
            "--quiet",
        ],
        {"HF_HOME": str(tmp_path / "hf")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = report(out)
    assert r["settings"]["classes"] == 2 and r["experiment"]["data"] == "sst2"


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory) -> Path:
    import torch
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.pt"
    torch.save(
        {"state_dict": EXTRA_ARCHS["simple_cnn"](num_classes=10).state_dict(), "arch_key": "simple_cnn"}, path
    )
    return path


def test_imagenette_name_uses_the_documented_location(cnn_checkpoint, tmp_path, monkeypatch, offline, capsys):
    root = tmp_path / "datasets"
    monkeypatch.setenv("SPARSIFY_DATASETS", str(root))
    args = [
        "run",
        "sparse-transfer",
        "--use-case",
        "image-classification",
        "--model",
        str(cnn_checkpoint),
        "--data",
        "imagenette",
        "--optim-level",
        "0",
        "--train-kwargs",
        json.dumps(TRAIN_FAST),
        "--recipe-args",
        RECIPE,
        "--quiet",
    ]
    assert_bad(
        [*args, "-o", str(tmp_path / "o")],
        capsys,
        "data 'imagenette' is not downloaded yet",
        "imagenette2-160.tgz",
        str(root / "imagenette2-160") + "/train",
        out=tmp_path / "o",
    )
    make_imagefolder(root / "imagenette2-160")  # what the extracted archive looks like (train/, val/)
    code, _, err = run_cli([*args, "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert report(tmp_path / "out")["settings"]["classes"] == 3


def test_data_keys_on_csv_data_and_conflicting_limits_are_one_line(tiny_bert, text_csv, tmp_path, capsys):
    base = [
        "run",
        "training-aware",
        "--use-case",
        "text-classification",
        "--model",
        str(tiny_bert),
        "--data",
        str(text_csv),
        "-o",
        str(tmp_path / "o"),
        "--quiet",
    ]
    assert_bad(
        [*base, "--train-kwargs", '{"text_column": "sentence"}'],
        capsys,
        "train-kwargs ['text_column'] select columns/splits of a Hugging Face dataset",
        out=tmp_path / "o",
    )
    assert_bad(
        [*base, "--train-samples", "8", "--train-kwargs", '{"max_train_samples": 16}'],
        capsys,
        "--train-samples 8 and train-kwargs 'max_train_samples' 16 disagree",
        out=tmp_path / "o",
    )
