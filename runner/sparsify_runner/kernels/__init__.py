"""Numerical kernels of the one-shot algorithms, on plain tensors and arrays (no ONNX graph,
no onnxruntime): Hessian accumulation, the one dampening policy and the solves built on it
(``damped_hessian``: Cholesky factors, the least-squares refit to the dense model), OBS /
SparseGPT pruning, structured OBS channel selection, GPTQ rounding, magnitude pruning,
per-layer sparsity allocation. The modifiers in ``modifiers/`` feed them what ``onnx_graph``
captures from the model."""
