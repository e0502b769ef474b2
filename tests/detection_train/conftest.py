"""Object detection through the training pathways: a small synthetic YOLO/COCO dataset
(MNIST digits on photos, examples/detection_assets.py) and a YOLO-style detector trained on
it for a few seconds, both built once per session."""

from __future__ import annotations

from pathlib import Path

import detection_assets
import pytest

IMAGE_SIZE = 96


@pytest.fixture(scope="session")
def det_data(tmp_path_factory):
    """48 train / 16 val images of 96 px, 3 digit classes, YOLO and COCO layouts in one folder."""
    out = tmp_path_factory.mktemp("det_train_data")
    return detection_assets.build_detection_dataset(
        out, n_train=48, n_val=16, size=IMAGE_SIZE, num_classes=3, fmt="both", seed=5, digit_px=(24, 44)
    )


@pytest.fixture(scope="session")
def yolo_checkpoint(det_data, tmp_path_factory) -> Path:
    """yolov8-pico fine-tuned on ``det_data`` for a few seconds, saved as a run's model.pt
    would be (``state_dict``, ``arch_key``, ``image_size``, ``classes``)."""
    path = tmp_path_factory.mktemp("det_ckpt") / "yolo.pt"
    return detection_assets.train_base_detector(det_data.root, path, image_size=IMAGE_SIZE, steps=120)
