"""Detection data fixtures: the synthetic MNIST-on-photos dataset of examples/detection_assets.py
(built once per session, tiny) and a hand-made two-image YOLO dataset to break on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def det_assets():
    """The examples/detection_assets.py module."""
    import detection_assets

    return detection_assets


@pytest.fixture(scope="session")
def det_synth(det_assets, tmp_path_factory):
    """20 train / 8 val synthetic images written as YOLO and COCO in one folder."""
    out = tmp_path_factory.mktemp("det_synth")
    return det_assets.build_detection_dataset(out, n_train=20, n_val=8, size=128, fmt="both", seed=3)


@pytest.fixture
def det_tiny(tmp_path) -> Path:
    """A valid two-class YOLO dataset: one train and one val image (64x48), one box each."""
    from PIL import Image

    root = tmp_path / "tiny"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        Image.new("RGB", (64, 48), (40, 90, 160)).save(root / "images" / split / f"{split}.png")
        (root / "labels" / split / f"{split}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root
