"""One candidate: llm-compressor's ``oneshot`` with one scheme on a fresh copy of the dense model,
its held-out perplexity measured in memory, then saved as a compressed-tensors folder.

This is the only module that runs llm-compressor. Its console logger writes to stdout, so it
is set to errors only (``LLM_COMPRESSOR_LOG_LEVEL`` still wins when the user sets it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import perplexity
from .model_loading import load_model
from .schemes import SchemeName, build_recipe

CPU_CALIBRATION_BATCH = 16
"""llm-compressor calibrates faster in batches on CPU (SmolLM2: ~5 s per layer at 16, ~33 s at 1)."""


@dataclass(frozen=True)
class CandidateOutcome:
    scheme: SchemeName
    folder: Path
    perplexity: perplexity.Perplexity
    compress_seconds: float
    eval_seconds: float
    sparsity: float
    """Share of exact zeros in the quantized layers' weights after compression."""


def _oneshot() -> Any:
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    try:
        from llmcompressor import oneshot
    except ImportError as err:
        from ..errors import InputError

        raise InputError(
            f"text-generation needs llm-compressor ({err}); install it as docs/llm.md says "
            "(pip install 'sparsify-k8s[llm]' then pip install --no-deps llmcompressor==0.14.0.1)"
        ) from None
    return oneshot


def calibration_dataset(windows: Any) -> Any:
    import torch
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()}
    )


def weight_sparsity(model: Any) -> float:
    """Exact zeros over all Linear weights but the output head (what the schemes compress)."""
    import torch

    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            weight = module.weight.detach()
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else 0.0


def run_candidate(
    scheme: SchemeName,
    *,
    dense_folder: Path,
    tokenizer: Any,
    group_size: int,
    calibration: Any,
    held_out: Any,
    out_dir: Path,
    recipe: list[Any] | None = None,
) -> CandidateOutcome:
    """Compress a fresh float copy of the dense model with ``scheme``, score it, save it.
    ``recipe``: llm-compressor modifiers to run instead of the scheme's own (the training
    pathways quantize a pruned model with rounding that keeps its zeros)."""
    oneshot = _oneshot()
    model = load_model(dense_folder)
    started = time.perf_counter()
    oneshot(
        model=model,
        processor=tokenizer,
        recipe=recipe if recipe is not None else build_recipe(scheme, group_size),
        dataset=calibration_dataset(calibration),
        max_seq_length=int(calibration.shape[1]),
        num_calibration_samples=int(calibration.shape[0]),
        batch_size=min(CPU_CALIBRATION_BATCH, int(calibration.shape[0])),
        shuffle_calibration_samples=False,
    )
    compress_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scored = perplexity.measure(model, held_out)
    eval_seconds = time.perf_counter() - started
    sparsity = weight_sparsity(model)
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    del model
    return CandidateOutcome(scheme, out_dir, scored, compress_seconds, eval_seconds, sparsity)
