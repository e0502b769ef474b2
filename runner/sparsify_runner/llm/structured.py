"""Structured pruning of a Llama-family causal LM while it trains: whole key/value head groups
(each with the query heads that share it) and MLP channels, removed from every decoder layer.

Every layer keeps the *same* number of heads and channels (each layer its own most important
ones), so the pruned model is still described by one config (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``): ``save_pretrained`` writes it and
transformers reloads it with no custom code. The hidden size (embeddings, norms, residual
stream, output head) stays.

Importance is magnitude, as for the other structured pruning: a head group's is the squared L2
norm of its rows in ``q_proj``/``k_proj``/``v_proj`` and its columns in ``o_proj``; an MLP
channel's the same over its ``gate_proj``/``up_proj`` rows and ``down_proj`` column. The level's
``macs_reduction`` is reached in ``events`` steps over the first part of training (cubic, as
``modifiers.training.structured``): each event keeps ``round(kv * keep)`` head groups (at least
one) and gives the MLP whatever the MACs target leaves, rounded to ``round_to`` channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..modifiers.base import Event, Modifier

log = logging.getLogger("sparsify.training")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Widths:
    """Per-layer sizes that structured pruning changes."""

    kv_heads: int
    heads: int
    head_dim: int
    intermediate: int

    def layer_macs(self, hidden: int) -> int:
        """Multiply-adds per token of one decoder layer's Linear layers."""
        attention = hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attention + 3 * hidden * self.intermediate


def widths_of(config: Any) -> Widths:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return Widths(kv, heads, head_dim, int(config.intermediate_size))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers, checked for the Llama layout; InputError naming --structure otherwise."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    ok = layers is not None and all(
        all(isinstance(getattr(layer.self_attn, n, None), nn.Linear) for n in ATTENTION)
        and all(isinstance(getattr(layer.mlp, n, None), nn.Linear) for n in MLP)
        for layer in layers
    )
    if not ok:
        raise InputError(
            f"--structure channels supports Llama-family layouts (q/k/v/o_proj attention, gate/up/down_proj "
            f"MLP); {type(model).__name__} is not one: leave --structure out for gradual magnitude pruning"
        )
    return list(layers)


def check_layout(folder: Any) -> None:
    """``decoder_layers``'s check on an empty (meta-device) model of ``folder``'s config, before any
    weights are read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        decoder_layers(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)))


def plan_widths(base: Widths, hidden: int, keep: float, round_to: int) -> Widths:
    """Head groups and MLP channels that keep about ``keep`` of a layer's MACs."""
    group = base.heads // base.kv_heads
    kv = max(1, min(base.kv_heads, round(base.kv_heads * keep)))
    attention = Widths(kv, kv * group, base.head_dim, 0).layer_macs(hidden)
    room = keep * base.layer_macs(hidden) - attention
    channels = int(room // (3 * hidden))
    channels = max(round_to, channels // round_to * round_to) if round_to > 1 else max(1, channels)
    return Widths(kv, kv * group, base.head_dim, min(base.intermediate, channels))


def _slice(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A smaller copy of ``layer`` keeping ``index`` of its outputs (dim 0) or inputs (dim 1)."""
    weight = layer.weight.detach().index_select(dim, index.to(layer.weight.device))
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=layer.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            bias = layer.bias.detach()
            new.bias.copy_(bias.index_select(0, index.to(bias.device)) if dim == 0 else bias)
    new.train(layer.training)
    return new


def _rows(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Squared norm of each of ``groups`` equal blocks of rows."""
    return weight.detach().float().pow(2).reshape(groups, -1).sum(1)


@torch.no_grad()
def prune_layer(layer: nn.Module, base: Widths, target: Widths) -> None:
    """Keep ``target``'s most important head groups and MLP channels of one decoder layer."""
    attn, mlp = layer.self_attn, layer.mlp
    kv_now = attn.k_proj.out_features // base.head_dim
    group = base.heads // base.kv_heads
    if target.kv_heads < kv_now:
        score = (
            _rows(attn.q_proj.weight, kv_now)
            + _rows(attn.k_proj.weight, kv_now)
            + _rows(attn.v_proj.weight, kv_now)
            + _rows(attn.o_proj.weight.t(), kv_now)
        )
        keep = score.topk(target.kv_heads).indices.sort().values
        kv_rows = (keep[:, None] * base.head_dim + torch.arange(base.head_dim)).reshape(-1)
        q_rows = (keep[:, None] * group * base.head_dim + torch.arange(group * base.head_dim)).reshape(-1)
        attn.q_proj = _slice(attn.q_proj, q_rows, 0)
        attn.k_proj = _slice(attn.k_proj, kv_rows, 0)
        attn.v_proj = _slice(attn.v_proj, kv_rows, 0)
        attn.o_proj = _slice(attn.o_proj, q_rows, 1)
    if target.intermediate < mlp.gate_proj.out_features:
        score = (
            mlp.gate_proj.weight.float().pow(2).sum(1)
            + mlp.up_proj.weight.float().pow(2).sum(1)
            + mlp.down_proj.weight.float().pow(2).sum(0)
        )
        keep = score.topk(target.intermediate).indices.sort().values
        mlp.gate_proj = _slice(mlp.gate_proj, keep, 0)
        mlp.up_proj = _slice(mlp.up_proj, keep, 0)
        mlp.down_proj = _slice(mlp.down_proj, keep, 1)


def set_widths(model: nn.Module, widths: Widths) -> None:
    """The config (and each attention's cached sizes) after pruning, so save/reload agree."""
    config = model.config
    config.num_attention_heads, config.num_key_value_heads = widths.heads, widths.kv_heads
    config.head_dim, config.intermediate_size = widths.head_dim, widths.intermediate
    for layer in decoder_layers(model):
        layer.self_attn.num_key_value_groups = widths.heads // widths.kv_heads
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = widths.intermediate


class LlmChannelPruner(Modifier):
    """Training modifier: structured pruning events at scheduled steps (``batch_start``); returns
    True when the model changed, so the trainer rebuilds its optimizer."""

    def __init__(
        self,
        model: nn.Module,
        *,
        macs_reduction: float,
        start_step: int,
        end_step: int,
        events: int = 4,
        round_to: int = 8,
    ) -> None:
        decoder_layers(model)  # the layout check, before training
        self.base = widths_of(model.config)
        self.hidden = int(model.config.hidden_size)
        self.reduction, self.events, self.round_to = macs_reduction, max(1, events), round_to
        span = max(0, end_step - start_step)
        self.schedule = [start_step + round(span * i / max(1, self.events - 1)) for i in range(self.events)]
        self.done_events = 0
        self.widths = self.base
        self.model: nn.Module | None = None

    def target_keep(self, event: int) -> float:
        """Share of the layers' MACs kept after event ``event`` (1-based): cubic toward 1 - reduction."""
        return 1.0 - self.reduction * (1.0 - (1.0 - event / self.events) ** 3)

    def initialize(self, trainer) -> None:
        self.model = trainer.bare_model
        if self.widths != self.base:  # resumed mid-run: the checkpoint restored the smaller layers
            set_widths(self.model, self.widths)

    def on_event(self, trainer, event: Event, **payload: Any) -> Any:
        if event is not Event.batch_start:
            return None
        changed = False
        while self.done_events < self.events and trainer.step >= self.schedule[self.done_events]:
            self.done_events += 1
            changed = self.prune_to(self.target_keep(self.done_events)) or changed
        return changed

    def prune_to(self, keep: float) -> bool:
        assert self.model is not None
        target = plan_widths(self.base, self.hidden, keep, self.round_to)
        target = Widths(  # never grow back
            min(target.kv_heads, self.widths.kv_heads),
            min(target.heads, self.widths.heads),
            target.head_dim,
            min(target.intermediate, self.widths.intermediate),
        )
        if target == self.widths:
            return False
        for layer in decoder_layers(self.model):
            prune_layer(layer, self.base, target)
        set_widths(self.model, target)
        log.info("structured pruning: %s -> %s (MACs kept %.3f)", self.widths, target, keep)
        self.widths = target
        return True

    @property
    def macs_kept(self) -> float:
        return self.widths.layer_macs(self.hidden) / self.base.layer_macs(self.hidden)

    def state_dict(self) -> dict[str, Any]:
        return {"done_events": self.done_events, "widths": list(vars(self.widths).values())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done_events = int(state["done_events"])
        self.widths = Widths(*state["widths"])
