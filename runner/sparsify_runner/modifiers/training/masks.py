"""Sparsity masks on weight tensors.

``MaskSet`` keeps one boolean mask per prunable weight. Used fixed (sparse-transfer: the
pre-sparsified model's zeros stay exactly zero) or updated by gradual magnitude pruning.
Pruned weights are kept at zero by zeroing their gradients after every backward pass and
re-applying the mask after every optimizer step (weight decay or momentum cannot revive them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import Event, Modifier


def prunable_weights(
    model: nn.Module, *, min_params: int = 0, exclude: tuple[str, ...] = ()
) -> dict[str, nn.Parameter]:
    """Conv/Linear weights by module name (the final classifier is usually excluded)."""
    out: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        prunable = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear)
        if prunable and module.weight.numel() >= min_params and name not in exclude:
            out[name] = module.weight
    return out


def classifier_name(model: nn.Module) -> str:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else ""


class MaskSet:
    """Masks for named weights of one model; ``fixed`` ones are never recomputed."""

    def __init__(
        self, model: nn.Module, names: list[str], masks: dict[str, torch.Tensor] | None = None
    ) -> None:
        self.model = model
        self.names = names
        self.masks: dict[str, torch.Tensor] = masks or {
            n: torch.ones_like(self._weight(n), dtype=torch.bool) for n in names
        }

    @classmethod
    def from_zeros(cls, model: nn.Module, **kwargs: Any) -> MaskSet:
        weights = prunable_weights(model, **kwargs)
        return cls(model, list(weights), {n: (w.detach() != 0) for n, w in weights.items()})

    def _weight(self, name: str) -> nn.Parameter:
        return self.model.get_submodule(name).weight

    def rebind(self, model: nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def apply(self) -> None:
        for n, mask in self.masks.items():
            w = self._weight(n)
            if mask.device != w.device:
                self.masks[n] = mask = mask.to(w.device)
            w.mul_(mask)

    def zero_grads(self) -> None:
        for n, mask in self.masks.items():
            w = self._weight(n)
            if w.grad is not None:
                w.grad.mul_(mask.to(w.grad.device))

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.cpu() for n, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.masks = {n: state[n].bool() for n in self.names if n in state}


class FixedMasks(Modifier):
    """Training modifier: hold the masks fixed (sparse-transfer)."""

    def __init__(self, masks: MaskSet) -> None:
        self.masks = masks

    def initialize(self, trainer) -> None:
        self.masks.rebind(trainer.bare_model)
        self.masks.apply()

    def on_event(self, trainer, event: Event, **payload: Any) -> Any:
        if event is Event.after_backward:
            self.masks.zero_grads()
        elif event is Event.optimizer_step:
            self.masks.apply()
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks.load_state_dict(state["masks"])
