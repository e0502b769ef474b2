"""Torch training modifiers (the ``Modifier`` contract, driven by ``training.loop.Trainer``):
gradual magnitude pruning, fixed masks, structured channel/head pruning, distillation, and
quantization-aware fake quantization."""
