"""Object detectors behind one contract (``base.py``): the project's YOLOv8-style models
(``yolo.py``) and, where that module is present, torchvision architectures
(``torchvision_detectors.py``). ``build_detector`` picks by architecture name."""

from __future__ import annotations

import difflib
from typing import Any

YOLO_NAMES: tuple[str, ...] = ("yolov8-pico", "yolov8n", "yolov8s")
"""Mirrors ``yolo.YOLO_ARCHS`` (kept here so listing names does not import torch)."""


def _torchvision_names() -> tuple[str, ...]:
    try:
        from .torchvision_detectors import TORCHVISION_DETECTORS
    except ImportError:
        return ()
    return tuple(TORCHVISION_DETECTORS)


def known_detectors() -> list[str]:
    """Every detection architecture name ``build_detector`` accepts."""
    return [*YOLO_NAMES, *_torchvision_names()]


def native_size(arch: str) -> int | None:
    """The input size an architecture is designed for, or None when any multiple of 32 suits
    it equally (the YOLO models: the data's image size decides)."""
    if arch in YOLO_NAMES:
        return None
    if arch in _torchvision_names():
        from . import torchvision_detectors

        sized = getattr(torchvision_detectors, "native_size", None)
        if callable(sized):
            return sized(arch)
        return 320 if "320" in arch else None
    return None


def build_detector(arch: str, num_classes: int, image_size: int) -> Any:
    """A randomly initialized detector (an ``nn.Module`` following ``base.Detector``) for
    ``num_classes`` classes and ``image_size x image_size`` inputs."""
    from ...errors import InputError

    if arch in YOLO_NAMES:
        from .yolo import build_yolo

        return build_yolo(arch, num_classes, image_size)
    if arch in _torchvision_names():
        from .torchvision_detectors import build_torchvision_detector

        return build_torchvision_detector(arch, num_classes, image_size)
    names = known_detectors()
    close = difflib.get_close_matches(arch, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"use one of {', '.join(names)}"
    raise InputError(f"unknown detection architecture '{arch}'; {hint}")
