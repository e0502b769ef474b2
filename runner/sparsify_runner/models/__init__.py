"""Loading trainable models: torchvision architectures + state dicts, Hugging Face folders.

Checkpoints are untrusted input: ``torch.load(weights_only=True)`` or safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import UseCase


@dataclass
class LoadedModel:
    module: Any
    """The torch.nn.Module, with a head sized for the dataset's classes."""
    kind: str
    """'image', 'text' or 'detection'."""
    arch: str
    num_classes: int
    head_replaced: bool = False
    """The checkpoint's classifier did not match the data; a fresh head was attached."""
    tokenizer: Any = None
    structured: bool = False
    """Layer sizes differ from the stock architecture (a structurally pruned result)."""
    notes: list[str] = field(default_factory=list)


def load_model(
    use_case: str,
    path,
    *,
    arch: str | None,
    classes: list[str],
    image_size: int | None = None,
    default_size: int = 320,
) -> LoadedModel:
    """Dispatch on the use case (image: torchvision + state dict; detection: a detector
    architecture + state dict at a static input size; text: Hugging Face)."""
    if use_case == UseCase.object_detection:
        from .detection.load import load_detection_model

        return load_detection_model(path, arch, classes, image_size=image_size, default_size=default_size)
    if use_case == UseCase.image_classification:
        from .vision import load_vision_model

        return load_vision_model(path, arch, len(classes))
    from .text import load_text_model

    return load_text_model(path, classes)
