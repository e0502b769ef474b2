"""Numerical kernels of the one-shot algorithms, on plain tensors and arrays (no ONNX graph,
no onnxruntime): Hessian accumulation, OBS / SparseGPT pruning and its upstream correction,
GPTQ rounding, magnitude pruning, per-layer sparsity allocation. The modifiers in
``modifiers/`` feed them what ``onnx_graph`` captures from the model."""
