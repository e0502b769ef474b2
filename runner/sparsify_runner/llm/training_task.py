"""A causal language model as a training ``Task``: token windows in, next-token loss, held-out
perplexity out.

The training loop, the modifiers (GMP, fixed masks, distillation) and the checkpoints only call
``Task`` methods, so a causal LM trains through the same loop as the classifiers and detectors.
Each sample is one window of ``sequence_length`` tokens (``llm.text_data``): the inputs are
``{"input_ids": window}`` and the target is the window itself, shifted by one inside the loss.
The headline metric is perplexity, where lower is better (``LOWER_IS_BETTER``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..training.task import Task

KIND = "causal-lm"
INPUT_NAME = "input_ids"
LOWER_IS_BETTER = True
"""Perplexity: a model is better when it is lower (the classifiers' accuracy is the other way)."""


class WindowDataset(Dataset):
    """``({"input_ids": window}, window)`` for each row of a ``[n, sequence_length]`` tensor."""

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        window = self.windows[i]
        return {INPUT_NAME: window}, window


def next_token_logits_and_targets(
    logits: torch.Tensor, ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions for positions 1..T-1 as ``[N, vocab]``, the tokens they predict as ``[N]``)."""
    return logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)


def token_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` averaged over next-token positions
    (the classifiers' ``kd_loss`` with each position as one sample)."""
    from ..modifiers.training.distillation import kd_loss

    vocab = student.shape[-1]
    return kd_loss(student[:, :-1].reshape(-1, vocab), teacher[:, :-1].reshape(-1, vocab), temperature)


@dataclass
class CausalLMTask(Task):
    metric: str = "perplexity"

    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=inputs[INPUT_NAME]).logits

    def collate(self, batch: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids = torch.stack([b[1] for b in batch])
        return {INPUT_NAME: ids}, ids

    def training_loss(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token cross-entropy; the logits go on to distillation."""
        logits = self.forward(model, inputs).float()
        predicted, wanted = next_token_logits_and_targets(logits, targets)
        return F.cross_entropy(predicted, wanted), logits

    def distillation_loss(
        self,
        outputs: torch.Tensor,
        teacher: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        temperature: float,
    ) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.forward(teacher, inputs).float()
        return token_kd_loss(outputs, teacher_logits, temperature)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, device: torch.device, batch_size: int = 64
    ) -> dict[str, float]:
        """Held-out perplexity (``llm.perplexity``: exp of the mean window NLL)."""
        from .perplexity import measure

        was_training = model.training
        try:
            scored = measure(model, self.val.windows, batch_size=max(1, min(batch_size, 8)))
        finally:
            model.train(was_training)
        return {"perplexity": scored.value}

    def example_inputs(self, batch: int = 1) -> dict[str, torch.Tensor]:
        window = self.val.windows[0]
        return {INPUT_NAME: window.unsqueeze(0).repeat(batch, 1)}

    def onnx_metrics(self, path, samples: list, targets: list, batch_size: int = 64) -> dict[str, Any]:
        raise NotImplementedError("text-generation ships a Hugging Face folder; it is scored in PyTorch")


def causal_lm_task(
    train_windows: torch.Tensor, held_out: torch.Tensor, *, sources: dict[str, str]
) -> CausalLMTask:
    """Training on ``train_windows``, evaluation on ``held_out`` (disjoint, from ``load_windows``)."""
    return CausalLMTask(
        KIND,
        [],
        WindowDataset(train_windows),
        WindowDataset(held_out),
        [INPUT_NAME],
        {
            "sequence_length": int(train_windows.shape[1]),
            "train_windows": int(train_windows.shape[0]),
            "held_out_windows": int(held_out.shape[0]),
            "sources": sources,
        },
    )
