"""The one contract every modifier follows, in the spirit of SparseML / llm-compressor.

A modifier is a small object with a uniform lifecycle:

``initialize(state)``
    once, before it acts (training: when the loop starts; one-shot: when its stage starts).
``on_event(state, event, **payload)``
    training modifiers react to the loop's named events (``Event``); a one-shot modifier
    does its whole work in ``finalize`` and ignores events.
``finalize(state) -> ModifierResult``
    once, at the end: undo temporary changes (fake-quant hooks), return what happened
    (notes for the report, per-layer records, INT8 candidates, timings).
``state_dict()`` / ``load_state_dict()``
    what a preempted run needs to resume; the trainer keys it by the modifier's place in
    the recipe (``checkpoint_key``), so two modifiers of one class never collide.

``state`` is whatever the pathway runs the modifier on: the ``Trainer`` for torch
modifiers (model, step, device, task), a ``OneShotState`` for ONNX ones. The events a
training loop sends, and what each one's payload and return value mean, are listed on
``Event``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Event(StrEnum):
    """Training-loop events, in the order one step sends them.

    - ``batch_start``: before the forward pass. Return True when the model's structure
      changed (the loop then re-wraps DDP and rebuilds the optimizer).
    - ``loss``: payload ``loss``, ``logits`` (the task's training outputs: logits, or a
      detector's dict of dense outputs), ``inputs``, ``labels`` (the targets); return the loss
      to use (None keeps it).
    - ``after_backward``: gradients exist, before clipping and the optimizer step.
    - ``optimizer_step``: after the optimizer updated the weights.
    """

    batch_start = "batch_start"
    loss = "loss"
    after_backward = "after_backward"
    optimizer_step = "optimizer_step"


@dataclass
class ModifierResult:
    """What one modifier reports when it finalizes (all optional)."""

    notes: list[str] = field(default_factory=list)
    layers: list[Any] = field(default_factory=list)
    candidates: list[Any] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


class Modifier:
    """Base class: every hook is a no-op, so a modifier overrides only what it uses."""

    def initialize(self, state: Any) -> None:
        """Called once before the modifier acts."""

    def on_event(self, state: Any, event: Event, **payload: Any) -> Any:
        """React to one training-loop event (see ``Event`` for the return values)."""
        return None

    def finalize(self, state: Any) -> ModifierResult:
        """Called once at the end; undo temporary changes and report."""
        return ModifierResult()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (resume after preemption)."""


def checkpoint_key(index: int, modifier: Modifier) -> str:
    """Checkpoint key of a modifier: its place in the recipe plus its class (``0.GMPModifier``)."""
    return f"{index}.{type(modifier).__name__}"
