"""Algorithms, one module each (pruning, quantization, distillation, ...)."""
