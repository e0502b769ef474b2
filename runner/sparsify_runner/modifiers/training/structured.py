"""Structured pruning with Torch-Pruning's DepGraph: remove whole conv channels, attention
heads and MLP neurons (with every coupled layer: batch norms, depthwise convs, residual
adds, the next layer's inputs), so the exported ONNX really has fewer FLOPs.

The optim level maps to a MACs reduction target. Pruning happens in a few events spread
over the first part of training (a cubic schedule on the MACs kept), each event pruning by
channel magnitude until the model is under that event's MACs budget; training with
distillation recovers accuracy between and after the events.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..base import Event, Modifier

log = logging.getLogger("sparsify.training")


def count_macs(model: nn.Module, example_inputs: dict[str, torch.Tensor]) -> int:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        if len(example_inputs) == 1 and not hasattr(model, "config"):  # a vision model or detector
            macs, _ = tp.utils.count_ops_and_params(model, next(iter(example_inputs.values())))
        else:  # keyword inputs (transformers): count through a positional wrapper
            names = list(example_inputs)
            wrapper = _Positional(model, names)
            macs, _ = tp.utils.count_ops_and_params(wrapper, tuple(example_inputs[n] for n in names))
    finally:
        model.train(was_training)
    return int(macs)


class _Positional(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor):
        return self.model(**dict(zip(self.names, args, strict=True))).logits


class StructuredPruner(Modifier):
    """Training modifier: structured pruning events at scheduled steps."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: dict[str, torch.Tensor],
        *,
        kind: str,
        macs_reduction: float,
        start_step: int,
        end_step: int,
        events: int = 4,
        round_to: int | None = None,
        ignored: list[str] | None = None,
    ) -> None:
        self.kind = kind
        self.example_inputs = example_inputs
        self.reduction = macs_reduction
        self.events = max(1, events)
        span = max(0, end_step - start_step)
        self.schedule = (
            [start_step + round(span * i / max(1, self.events - 1)) for i in range(self.events)]
            if self.events > 1
            else [start_step]
        )
        self.round_to = round_to
        # small per-step ratios hit the MACs budget closely; heads need coarser steps
        self.iterative_steps = 20 if kind == "text" else 60
        self.ignored = ignored or []
        self.base_macs = count_macs(model, example_inputs)
        self.done_events = 0
        self.model: nn.Module | None = None
        self._pruner = None
        self._build_macs: int | None = None

    def target_keep(self, event: int) -> float:
        """MACs kept after event ``event`` (1-based): cubic toward 1 - reduction."""
        frac = event / self.events
        return 1.0 - self.reduction * (1.0 - (1.0 - frac) ** 3)

    def initialize(self, trainer) -> None:
        self.model = trainer.bare_model

    def on_event(self, trainer, event: Event, **payload: Any) -> Any:
        if event is not Event.batch_start:
            return None
        changed = False
        while self.done_events < self.events and trainer.step >= self.schedule[self.done_events]:
            self.done_events += 1
            self.prune_to(self.target_keep(self.done_events))
            changed = True
        return changed

    def _build(self) -> Any:
        import torch_pruning as tp

        model = self.model
        assert model is not None
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.example_inputs.items()}
        root: nn.Module = model
        if self.kind != "text":
            traced = next(iter(inputs.values()))
        else:  # trace keyword-input models through a positional wrapper
            root, traced = _Positional(model, list(inputs)), tuple(inputs.values())
        ignored = [model.get_submodule(n) for n in self.ignored]
        kwargs: dict[str, Any] = {}
        if self.kind == "text":
            heads = {}
            for m in model.modules():
                if (
                    hasattr(m, "query")
                    and hasattr(m, "key")
                    and hasattr(m, "value")
                    and hasattr(m, "num_attention_heads")
                ):
                    for lin in (m.query, m.key, m.value):
                        heads[lin] = m.num_attention_heads
            kwargs.update(
                num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5
            )
            # embeddings/hidden size stay: prune heads and MLP neurons only
            for m in model.modules():
                if isinstance(m, nn.Embedding | nn.LayerNorm):
                    ignored.append(m)
            for name, m in model.named_modules():
                if isinstance(m, nn.Linear) and name.endswith("output.dense"):
                    ignored.append(m)  # keeps the residual width; its input side is still pruned
        return tp.pruner.MagnitudePruner(
            root,
            traced,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.9,
            iterative_steps=self.iterative_steps,
            ignored_layers=ignored,
            round_to=self.round_to,
            **kwargs,
        )

    def prune_to(self, keep: float) -> None:
        model = self.model
        assert model is not None
        if self._pruner is None:
            self._pruner = self._build()
        target = self.base_macs * keep
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.example_inputs.items()}
        macs = count_macs(model, inputs)
        if self._build_macs is None:
            self._build_macs = macs
        pruner = self._pruner
        per_step = 0.9 / pruner.iterative_steps  # channel fraction (of the build-time model) per step
        steps = 0
        was_training = model.training
        model.eval()  # tracing must not update batch-norm statistics
        while macs > target and pruner.current_step < pruner.iterative_steps:
            # MACs fall about quadratically with the kept channel fraction (linearly for depthwise
            # convs), so this estimate undershoots; jump there, then refine one step at a time.
            keep_channels = (target / self._build_macs) ** 0.5
            needed = math.ceil((1 - keep_channels) / per_step) - pruner.current_step
            jump = max(1, min(int(needed * 0.8), pruner.iterative_steps - pruner.current_step))
            try:
                for _ in range(jump):
                    pruner.step()
                    steps += 1
            except ZeroDivisionError:  # torch-pruning ran a layer out of heads: stop here
                log.warning("structured pruning stopped early: no more heads to remove")
                pruner.current_step = pruner.iterative_steps
            macs = count_macs(model, inputs)
        model.train(was_training)
        if self.kind == "text":
            self._sync_heads()
        log.info(
            "structured pruning: %d steps, MACs %.3g -> %.3g (target %.3g)",
            steps,
            self.base_macs,
            macs,
            target,
        )

    def _sync_heads(self) -> None:
        for m in self.model.modules():
            if (
                hasattr(m, "query")
                and hasattr(m, "attention_head_size")
                and hasattr(m, "num_attention_heads")
            ):
                m.all_head_size = m.query.out_features
                m.num_attention_heads = m.query.out_features // m.attention_head_size

    def state_dict(self) -> dict[str, Any]:
        return {"done_events": self.done_events, "base_macs": self.base_macs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done_events = int(state["done_events"])
        self.base_macs = int(state["base_macs"])
