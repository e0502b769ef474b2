"""torchvision architecture + state dict (or a checkpoint dict with ``state_dict`` and
``arch_key``, the original product's format), loaded without unpickling objects."""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from . import LoadedModel
from .simple_cnn import EXTRA_ARCHS


def known_archs() -> list[str]:
    import torchvision

    return sorted(set(torchvision.models.list_models(module=torchvision.models)) | set(EXTRA_ARCHS))


def build_arch(arch: str, num_classes: int) -> nn.Module:
    import torchvision

    if arch in EXTRA_ARCHS:
        return EXTRA_ARCHS[arch](num_classes=num_classes)
    if arch not in known_archs():
        close = difflib.get_close_matches(arch, known_archs(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "use a torchvision classification model name"
        raise InputError(f"unknown architecture '{arch}'; {hint} (e.g. resnet18, mobilenet_v2)")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A state dict or checkpoint dict from .pt/.pth (weights_only) or .safetensors."""
    if path.is_dir():
        raise InputError(
            f"model '{path}' is a folder; image classification expects a .pt/.pth/.safetensors file"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return {"state_dict": load_file(str(path))}
        except Exception as err:  # safetensors raises its own error types
            raise InputError(f"model '{path}' is not a readable safetensors file: {err}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0][:160]
        raise InputError(
            f"model '{path}' contains pickled objects beyond tensors ({first}); save model.state_dict() "
            "or {'state_dict': ..., 'arch_key': ...} instead"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(
            f"model '{path}' is not a PyTorch checkpoint: {str(err).splitlines()[0][:160]}"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"model '{path}' holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    return obj if "state_dict" in obj else {"state_dict": obj}


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("the architecture has no linear classifier head")
    return linears[-1]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def checkpoint_state(
    path: Path, arch: str | None, arch_hint: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(checkpoint dict, state dict without DDP's ``module.`` prefix, architecture name: ``arch``
    or the checkpoint's ``arch_key``); ``arch_hint`` names example architectures for the error."""
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"model '{path}': 'state_dict' must map parameter names to tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    arch = arch or ckpt.get("arch_key")
    if not arch:
        raise InputError(f"model '{path}' is a bare state dict; pass --arch ({arch_hint})")
    return ckpt, state, arch


def load_vision_model(path: Path, arch: str | None, num_classes: int) -> LoadedModel:
    ckpt, state, arch = checkpoint_state(path, arch, "a torchvision name such as resnet18")
    probe = build_arch(arch, 1000 if arch not in EXTRA_ARCHS else 10)
    head_name, _ = _last_linear(probe)
    head_weight = state.get(f"{head_name}.weight")
    ckpt_classes = int(head_weight.shape[0]) if head_weight is not None else num_classes
    model = build_arch(arch, ckpt_classes)
    if isinstance(ckpt.get("shapes"), dict):  # a structurally pruned result of a previous run
        from ..training.shapes import restore_shapes

        restore_shapes(model, state, ckpt["shapes"])
    if head_weight is None:
        raise InputError(
            f"state dict in '{path}' does not match architecture '{arch}': no '{head_name}.weight' "
            f"(keys look like {list(state)[:2]}); check --arch / arch_key"
        )
    load_state_strict(model, state, f"state dict in '{path}' (architecture '{arch}')")
    notes: list[str] = []
    replaced = ckpt_classes != num_classes
    if replaced:
        _, head = _last_linear(model)
        _set_module(model, head_name, nn.Linear(head.in_features, num_classes))
        notes.append(
            f"classifier head '{head_name}' replaced: checkpoint has {ckpt_classes} classes, "
            f"data has {num_classes}"
        )
    return LoadedModel(
        model,
        "image",
        arch,
        num_classes,
        head_replaced=replaced,
        notes=notes,
        structured=isinstance(ckpt.get("shapes"), dict),
    )


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that turns shape/key mismatches into one-line InputErrors."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        line = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise InputError(f"{what} does not match: {line[:200]}; check --arch / arch_key") from None
