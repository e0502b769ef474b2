"""Knowledge distillation (Hinton et al. 2015): the student matches the teacher's softened
outputs. loss = (1 - weight) * task_loss + weight * T^2 * KL(softmax(t/T) || softmax(s/T))
for classifiers; the task supplies the comparison (``Task.distillation_loss``), so detectors
distil their dense class scores and boxes instead."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Event, Modifier


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, -1),
            F.log_softmax(teacher / t, -1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


class DistillationModifier(Modifier):
    def __init__(self, teacher: nn.Module, *, weight: float = 0.5, temperature: float = 2.0) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.weight, self.temperature = weight, temperature

    def initialize(self, trainer) -> None:
        self.teacher.to(trainer.device)

    def on_event(self, trainer, event: Event, **payload: Any) -> Any:
        if event is not Event.loss:
            return None
        # the task knows what to compare: softened logits, or a detector's dense scores and boxes
        kd = trainer.task.distillation_loss(
            payload["logits"], self.teacher, payload["inputs"], self.temperature
        )
        return (1 - self.weight) * payload["loss"] + self.weight * kd
