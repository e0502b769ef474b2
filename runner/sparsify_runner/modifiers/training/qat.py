"""Quantization-aware training: fine-tune with INT8 simulated in the forward pass, so the
weights settle where onnxruntime's static INT8 loses little.

What is simulated mirrors the static QDQ model that ``int8.quantize_int8`` builds:
every Conv/Linear weight fake-quantized per output channel, symmetric, signed 8-bit (zero
stays exactly zero, so sparsity masks survive); every Conv/Linear input, and the logits,
fake-quantized per tensor, asymmetric unsigned 8-bit, with its range tracked as an
exponential moving average of the batch min/max while training and frozen in eval mode.
``torch.fake_quantize_*`` pass gradients straight through inside the range (the STE of
Jacob et al. 2018 / Krishnamoorthi 2018).

On CPUs whose u8s8 kernels saturate (x86 without VNNI, see ``cpu_features``) the INT8 model
is built with ``reduce_range`` (weights in [-64, 64]); the simulation then uses that grid too,
so the network is tuned for the integers onnxruntime will really compute there.

Per-channel symmetric weight quantization commutes with the per-channel scale that folding
a BatchNorm into its conv applies, so simulating it on the unfolded weights is exact for the
folded model onnxruntime runs.

The simulation is installed by shadowing each layer's ``forward`` on the instance: the
parameters and state dict keep their names (masks, checkpoints and ONNX export are
unaffected), and ``finalize`` (:meth:`FakeQuantModifier.remove`) restores the plain layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Modifier, ModifierResult

QUANTIZED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def weight_qmax(bits: int = 8, reduce_range: bool = False) -> int:
    """Largest weight integer: 127 for 8 bits, 64 with onnxruntime's ``reduce_range``."""
    return 64 if reduce_range and bits == 8 else 2 ** (bits - 1) - 1


def fake_quant_weight(weight: torch.Tensor, qmax: int = 127) -> torch.Tensor:
    """Per-output-channel symmetric signed fake quantization to [-qmax, qmax] (zero maps to zero)."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / qmax).clamp_min(1e-12).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax, qmax)


class ActivationRange(nn.Module):
    """Moving-average min/max of a tensor while training; fake-quantizes it to uint8."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if not bool(self.seen):
                    self.low.copy_(lo)
                    self.high.copy_(hi)
                    self.seen.fill_(True)
                else:
                    self.low.lerp_(lo, self.momentum)
                    self.high.lerp_(hi, self.momentum)
        if not bool(self.seen):
            return x
        # the range must contain 0 so that zero (padding, ReLU) is exact, as in onnxruntime
        lo, hi = float(min(self.low, 0.0)), float(max(self.high, 0.0))
        scale = max(hi - lo, 1e-8) / 255.0
        zero_point = int(round(-lo / scale))
        return torch.fake_quantize_per_tensor_affine(x, scale, min(255, max(0, zero_point)), 0, 255)


def _simulated_forward(
    module: nn.Module, observer: ActivationRange, qmax: int, output: ActivationRange | None
):
    def forward(x: torch.Tensor) -> torch.Tensor:
        # simulate in float32 (under CUDA autocast activations arrive as fp16/bf16)
        x = observer(x.float()).to(x.dtype)
        weight = fake_quant_weight(module.weight.float(), qmax).to(module.weight.dtype)
        if isinstance(module, nn.Linear):
            y = F.linear(x, weight, module.bias)
        else:
            y = module._conv_forward(x, weight, module.bias)
        return output(y.float()).to(y.dtype) if output is not None else y

    return forward


class FakeQuantModifier(Modifier):
    """Training modifier: INT8 simulation on every Conv/Linear of the trained model."""

    def __init__(self, *, weight_bits: int = 8, reduce_range: bool = False, momentum: float = 0.1) -> None:
        self.weight_bits = weight_bits
        self.reduce_range = reduce_range
        """Simulate onnxruntime's ``reduce_range`` weights (chosen where u8s8 saturates)."""
        self.momentum = momentum
        self.observers: dict[str, ActivationRange] = {}
        self._pending: dict[str, Any] | None = None
        self._installed: list[tuple[nn.Module, Any]] = []

    def initialize(self, trainer) -> None:
        self.install(trainer.bare_model)

    def finalize(self, trainer) -> ModifierResult:
        """Plain layers again: the exported model carries the trained weights, and onnxruntime's
        quantizer (not this simulation) builds the INT8 graph."""
        self.remove()
        return ModifierResult()

    def install(self, model: nn.Module) -> None:
        """Simulate INT8 on every Conv/Linear input and weight, and on the output of the last
        Linear (the classifier: onnxruntime quantizes the logits too)."""
        self.remove()
        device = next(model.parameters()).device
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)]
        head = next((n for n, m in reversed(layers) if isinstance(m, nn.Linear)), None)
        for name, module in layers:
            if not getattr(module, "_sparsify_fake_quant", False):
                observer = self._observer(name, device, module.training)
                output = self._observer(f"{name}:output", device, module.training) if name == head else None
                # the observers follow the model's train/eval mode through this hook
                handle = module.register_forward_pre_hook(_sync_mode(observer, output))
                qmax = weight_qmax(self.weight_bits, self.reduce_range)
                module.forward = _simulated_forward(module, observer, qmax, output)
                module._sparsify_fake_quant = True
                self._installed.append((module, handle))
        if self._pending:
            self.load_state_dict(self._pending)
            self._pending = None

    def _observer(self, key: str, device: torch.device, training: bool) -> ActivationRange:
        observer = self.observers.get(key) or ActivationRange(self.momentum)
        self.observers[key] = observer.to(device).train(training)
        return observer

    def remove(self) -> None:
        """Back to plain layers (the trained weights stay)."""
        for module, handle in self._installed:
            del module.forward
            handle.remove()
            del module._sparsify_fake_quant
        self._installed = []

    def state_dict(self) -> dict[str, Any]:
        return {name: {k: v.cpu() for k, v in o.state_dict().items()} for name, o in self.observers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.observers:  # resumed before install: apply when installed
            self._pending = state
            return
        for name, values in state.items():
            if name in self.observers:
                self.observers[name].load_state_dict(values)


def _sync_mode(*observers: ActivationRange | None):
    def hook(module: nn.Module, args):
        for observer in observers:
            if observer is not None and observer.training != module.training:
                observer.train(module.training)

    return hook
