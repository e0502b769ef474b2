"""Loading a detector for training: architecture name + state dict (or a checkpoint dict with
``arch_key`` / ``state_dict`` / ``image_size``, what a run's ``model.pt`` holds), read with
``weights_only=True``. When the checkpoint was trained on other classes, only the class
prediction layers are re-initialized for the dataset's classes; everything else loads."""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import InputError
from .. import LoadedModel


def _checkpoint_classes(state: dict[str, torch.Tensor], model) -> list[str]:
    """Names of the class-prediction tensors whose shapes differ from ``state``'s (a model
    trained on another class count); any other mismatch is an error."""
    own = model.state_dict()
    class_keys = set(model.class_head_keys())
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    unexpected = [k for k in mismatched if k not in class_keys]
    if unexpected:
        k = unexpected[0]
        raise InputError(
            f"checkpoint tensor '{k}' has shape {tuple(state[k].shape)}, the architecture "
            f"'{model.arch}' expects {tuple(own[k].shape)}; check --arch / arch_key"
        )
    return mismatched


def load_detection_model(
    path: Path, arch: str | None, classes: list[str], *, image_size: int | None, default_size: int
) -> LoadedModel:
    """The detector for ``classes`` at a static input size: ``image_size`` (train-kwargs), else
    the checkpoint's, else the architecture's native size, else ``default_size`` (the data's)."""
    from ..vision import checkpoint_state
    from . import build_detector, native_size

    ckpt, state, arch = checkpoint_state(
        path, arch, "a detector name such as yolov8n or ssdlite320_mobilenet_v3_large"
    )
    size = int(image_size or ckpt.get("image_size") or native_size(arch) or default_size)
    model = build_detector(arch, len(classes), size)
    if isinstance(ckpt.get("shapes"), dict):  # a structurally pruned result of a previous run
        from ...training.shapes import restore_shapes

        restore_shapes(model, state, ckpt["shapes"])
    notes: list[str] = []
    if hasattr(model, "load_checkpoint_state"):  # torchvision wrappers also take raw torchvision keys
        note = model.load_checkpoint_state(state)  # re-sizes the class head itself, says so
        resized = bool(note)
        notes += [note] if note else []
    else:
        resized = _checkpoint_classes(state, model)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            key = (missing or extra)[0]
            raise InputError(
                f"state dict in '{path}' does not match detector '{arch}': "
                f"{'missing' if missing else 'unexpected'} key '{key}'; check --arch / arch_key"
            )
        model.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=False)
        if resized:
            notes.append(
                f"class prediction layers re-initialized for {len(classes)} classes "
                f"(the checkpoint was trained on other classes); backbone, neck and box layers loaded"
            )
    return LoadedModel(
        model,
        "detection",
        arch,
        len(classes),
        head_replaced=bool(resized),
        notes=notes,
        structured=isinstance(ckpt.get("shapes"), dict),
    )
