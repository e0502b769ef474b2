"""Gradual magnitude pruning (Zhu & Gupta 2017, the SparseML GMP modifier).

Sparsity follows a cubic schedule from ``init_sparsity`` at ``start_step`` to
``final_sparsity`` at ``end_step``: s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3.
Masks are recomputed every ``update_every`` steps (a fraction of an epoch) by layer-wise
magnitude; between updates and after ``end_step`` (the recovery part of training) the masks
are held fixed, so accuracy recovers at the final sparsity.
"""

from __future__ import annotations

from typing import Any

import torch

from ..base import Event, Modifier
from .masks import MaskSet


def cubic_sparsity(step: int, start: int, end: int, init: float, final: float) -> float:
    if step < start:
        return 0.0
    if step >= end:
        return final
    frac = (step - start) / max(1, end - start)
    return final + (init - final) * (1.0 - frac) ** 3


class GMPModifier(Modifier):
    def __init__(
        self,
        masks: MaskSet,
        *,
        init_sparsity: float,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        update_every: int,
    ) -> None:
        self.masks = masks
        self.init, self.final = init_sparsity, final_sparsity
        self.start, self.end, self.every = start_step, max(end_step, start_step + 1), max(1, update_every)
        self.current = 0.0

    def target(self, step: int) -> float:
        return cubic_sparsity(step, self.start, self.end, self.init, self.final)

    def initialize(self, trainer) -> None:
        self.masks.rebind(trainer.bare_model)
        self.masks.apply()

    def on_event(self, trainer, event: Event, **payload: Any) -> Any:
        if event is Event.batch_start:
            step = trainer.step
            due = step >= self.start and (step - self.start) % self.every == 0 and step <= self.end
            if due or (step >= self.end and self.current < self.final):
                self._update(self.target(step))
        elif event is Event.after_backward:
            self.masks.zero_grads()
        elif event is Event.optimizer_step:
            self.masks.apply()
        return None

    @torch.no_grad()
    def _update(self, sparsity: float) -> None:
        for name in self.masks.names:
            weight = self.masks._weight(name)
            k = int(round(sparsity * weight.numel()))
            if k <= 0:
                continue
            threshold = weight.abs().flatten().kthvalue(k).values
            self.masks.masks[name] = weight.abs() > threshold
        self.masks.apply()
        self.current = sparsity

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks.state_dict(), "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks.load_state_dict(state["masks"])
        self.current = float(state["current"])
