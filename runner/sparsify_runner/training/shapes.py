"""Save and restore the shapes of a structurally pruned model as plain data.

``torch_pruning.state_dict`` pickles whole module ``__dict__``s, which cannot be loaded
with ``weights_only=True``. Instead we keep the int attributes that describe layer sizes
and resize parameters to the saved tensors before ``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SIZE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_attention_heads",
    "attention_head_size",
    "all_head_size",
    "num_heads",
    "head_dim",
    "embed_dim",
    "num_key_value_heads",
)


def _plain(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, tuple | list) and all(isinstance(v, int) for v in value)


def size_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs = {a: getattr(module, a) for a in SIZE_ATTRS if _plain(getattr(module, a, None))}
        attrs = {a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()}
        if attrs:
            out[name] = attrs
    # transformers keeps head counts in the config as well
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        out["__config__"] = {
            k: v
            for k, v in config.to_dict().items()
            if k in ("intermediate_size", "num_attention_heads") and _plain(v)
        }
    return out


def restore_shapes(
    model: nn.Module, state: dict[str, torch.Tensor], attrs: dict[str, dict[str, Any]]
) -> None:
    """Resize parameters/buffers to ``state``'s shapes and set the size attributes."""
    for key, tensor in state.items():
        mod_name, _, pname = key.rpartition(".")
        try:
            module = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue
        current = getattr(module, pname, None)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            if isinstance(current, nn.Parameter):
                setattr(
                    module, pname, nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad)
                )
            else:
                module.register_buffer(pname, torch.empty_like(tensor))
    for name, values in attrs.items():
        if name == "__config__":
            for k, v in values.items():
                setattr(model.config, k, v)
            continue
        try:
            module = model.get_submodule(name) if name else model
        except AttributeError:
            continue
        for attr, value in values.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
