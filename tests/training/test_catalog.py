"""Sparse-transfer base-model catalog: format, selection by optim level, register/list CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import sparsifyctl
from helpers import report
from sparsify_runner.catalog import Catalog, CatalogEntry, load_catalog, select
from sparsify_runner.errors import InputError

# end-to-end runs of the real CLI in subprocesses (-m 'not slow' skips them)
pytestmark = pytest.mark.slow


def _entry(name: str, params: int, sparsity: float, uc: str = "image-classification") -> CatalogEntry:
    return CatalogEntry(name=name, use_case=uc, uri=f"{name}.pt", parameters=params, sparsity=sparsity)


def test_selection_walks_from_largest_to_smallest():
    cat = Catalog(
        models=[
            _entry("small", 1000, 0.9),
            _entry("large", 1000, 0.0),
            _entry("mid", 1000, 0.6),
            _entry("bert", 10, 0.5, "text-classification"),
        ]
    )
    assert select(cat, "ic", 0.0)[0].name == "large"
    assert select(cat, "image-classification", 0.5)[0].name == "mid"
    assert select(cat, "image-classification", 1.0)[0].name == "small"
    assert select(cat, "sentiment-analysis", 0.9)[0].name == "bert"
    with pytest.raises(InputError, match="no base model for use case 'object-detection'"):
        select(cat, "object-detection", 0.5)


def test_bad_catalog_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": [{"name": "x", "useCase": "ic"}]}))
    with pytest.raises(InputError, match="models.0.uri"):
        load_catalog(path)


def _sparse_cnn(path: Path, keep: float, seed: int) -> None:
    from sparsify_runner.models.simple_cnn import EXTRA_ARCHS

    torch.manual_seed(seed)
    model = EXTRA_ARCHS["simple_cnn"](num_classes=3)
    for p in model.parameters():
        if p.dim() == 4:
            p.data.mul_(torch.rand_like(p) < keep)
    torch.save({"state_dict": model.state_dict(), "arch_key": "simple_cnn"}, path)


def test_sparse_transfer_picks_from_catalog_by_optim_level(image_data: Path, tmp_path: Path):
    cat_dir = tmp_path / "catalog"
    cat_dir.mkdir()
    _sparse_cnn(cat_dir / "cnn50.pt", 0.5, 1)
    _sparse_cnn(cat_dir / "cnn90.pt", 0.1, 2)
    (cat_dir / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "models": [
                    {
                        "name": "cnn-90",
                        "useCase": "image-classification",
                        "uri": "cnn90.pt",
                        "parameters": 30000,
                        "sparsity": 0.9,
                        "accuracy": 0.9,
                    },
                    {
                        "name": "cnn-50",
                        "useCase": "image-classification",
                        "uri": "cnn50.pt",
                        "parameters": 30000,
                        "sparsity": 0.5,
                        "accuracy": 0.95,
                    },
                ],
            }
        )
    )
    picked = {}
    for level in ("0.2", "0.9"):
        out = tmp_path / f"out{level}"
        proc = sparsifyctl(
            "run",
            "sparse-transfer",
            "--use-case",
            "ic",
            "--catalog",
            str(cat_dir / "catalog.yaml"),
            "--data",
            str(image_data),
            "--optim-level",
            level,
            "--train-kwargs",
            '{"epochs": 1}',
            "-o",
            str(out),
            "--quiet",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = report(out)
        picked[level] = r["settings"]["catalog_entry"]
        assert any("chosen from the catalog" in n for n in r["notes"])
    assert picked == {"0.2": "cnn-50", "0.9": "cnn-90"}


def test_register_training_result_and_list(image_data: Path, cnn_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "run"
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
        "0.9",
        "--name",
        "tiny-cnn-95",
        "--train-kwargs",
        json.dumps({"epochs": 2, "dense_epochs": 1}),
        "--recipe-args",
        '{"quantize": false}',
        "-o",
        str(out),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    catalog = tmp_path / "cat" / "catalog.yaml"
    proc = sparsifyctl("catalog", "register", str(out), "--catalog", str(catalog), "--dataset", "colors")
    assert proc.returncode == 0, proc.stderr
    cat = load_catalog(catalog)
    entry = cat.models[0]
    assert entry.name == "tiny-cnn-95" and entry.use_case == "image-classification"
    assert entry.sparsity > 0.8 and entry.accuracy is not None and entry.dataset == "colors"
    assert (catalog.parent / entry.uri).resolve() == (out / "model.pt").resolve()
    listed = sparsifyctl("catalog", "list", "--catalog", str(catalog), "--optim-level", "0.5")
    assert listed.returncode == 0 and "tiny-cnn-95" in listed.stdout and "<-" in listed.stdout
    bad = sparsifyctl("catalog", "register", str(tmp_path), "--catalog", str(catalog))
    assert bad.returncode == 2 and "report.json" in bad.stderr
