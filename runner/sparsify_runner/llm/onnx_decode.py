"""Greedy decoding of a CPU ONNX export with onnxruntime, and its timing.

The folder (written by :func:`sparsify_runner.llm.onnx_export.export_onnx`; a run ships it as
``onnx/`` beside the compressed-tensors ``model/``)::

    onnx/
      model.onnx            the decode graph (contrib ops: MatMulNBits, GroupQueryAttention, ...)
      model.onnx.data       its weights (external data)
      export.json           ExportInfo: format, layers, heads, head_dim, eos ids, input/output names,
                            weights ("int4" or "fp32"), block size
      tokenizer.json, tokenizer_config.json, ... , generation_config.json

Graph inputs: ``input_ids`` [batch, seq] int64, ``attention_mask`` [batch, past + seq] int64,
``position_ids`` [batch, seq] int64, ``past_key_values.{i}.key`` / ``.value``
[batch, kv_heads, past, head_dim] float32 (past = 0 on the first call); outputs ``logits``
[batch, seq, vocab] and ``present.{i}.key`` / ``.value`` (the grown cache, fed back as the
next call's past).

``OnnxCausalLM.generate_ids`` prefills the prompt in one call, then runs one token per call
with the KV cache, yielding token ids until an end-of-sequence id or ``max_new_tokens``
(greedy, batch 1). ``time_models`` measures prefill latency and per-token decode latency of
several exports alternately in one process (the project's robust statistics).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_export import ExportInfo


class OnnxCausalLM:
    """One exported folder loaded into an onnxruntime CPU session (plus its tokenizer)."""

    def __init__(self, folder: Path, *, threads: int = 0, load_tokenizer: bool = True) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.info = ExportInfo.read(self.folder)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.folder / self.info.model), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = None
        if load_tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self._present = [o.name for o in self.session.get_outputs()][1:]
        # onnxruntime-genai's graphs rotate inside GroupQueryAttention and take no position_ids
        self._wants_positions = any(i.name == "position_ids" for i in self.session.get_inputs())
        self._past = [
            name.format(i=i)
            for i in range(self.info.num_layers)
            for name in (self.info.past_key, self.info.past_value)
        ]

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self.info.eos_token_ids)

    def empty_cache(self, batch: int = 1) -> dict[str, np.ndarray]:
        shape = (batch, self.info.num_kv_heads, 0, self.info.head_dim)
        return {name: np.zeros(shape, np.float32) for name in self._past}

    def forward(
        self, input_ids: np.ndarray, past: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits [batch, seq, vocab] of ``input_ids`` after ``past`` (None: empty), and the new cache."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        batch, seq = input_ids.shape
        past = past if past is not None else self.empty_cache(batch)
        done = next(iter(past.values())).shape[2]
        feed: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": np.ones((batch, done + seq), np.int64),
            "position_ids": np.broadcast_to(np.arange(done, done + seq, dtype=np.int64), (batch, seq)).copy(),
            **past,
        }
        if not self._wants_positions:
            del feed["position_ids"]
        outputs = self.session.run(None, feed)
        cache = dict(zip(self._past, outputs[1:], strict=True))
        return outputs[0], cache

    def generate_ids(
        self, prompt_ids: Sequence[int], max_new_tokens: int, *, eos_token_ids: Sequence[int] | None = None
    ) -> Iterator[int]:
        """Greedy tokens after ``prompt_ids``, one per step with the KV cache; stops after an eos id
        (which is yielded) or ``max_new_tokens``."""
        if not prompt_ids:
            raise ValueError("the prompt needs at least one token")
        stop = set(self.eos_token_ids if eos_token_ids is None else eos_token_ids)
        logits, cache = self.forward(np.asarray(prompt_ids)[None])
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            yield token
            if token in stop:
                return
            logits, cache = self.forward(np.array([[token]]), cache)

    def generate(self, prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy continuation of ``prompt`` as text (without the prompt)."""
        if self.tokenizer is None:
            raise RuntimeError("loaded without its tokenizer")
        ids = self.tokenizer(prompt)["input_ids"]
        out = list(self.generate_ids(ids, max_new_tokens))
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def window_nll(self, windows: np.ndarray) -> list[float]:
        """Mean next-token negative log-likelihood of each window (one prefill each), as
        ``perplexity.measure`` computes it for the torch model."""
        losses = []
        for window in np.asarray(windows, dtype=np.int64):
            logits, _ = self.forward(window[None])
            logits = logits[0, :-1].astype(np.float64)
            targets = window[1:]
            top = logits.max(axis=-1, keepdims=True)
            logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
            losses.append(float(np.mean(logz - logits[np.arange(len(targets)), targets])))
        return losses


@dataclass(frozen=True)
class DecodeTiming:
    """One export's timing: prefill latency (ms per prompt) and decode latency (ms per token)."""

    prefill: Any  # report.LatencyStats, batch 1, one sample per prompt
    decode: Any  # report.LatencyStats, batch 1, one sample per generated token
    decode_tokens_per_s: float
    memory_bytes: int | None
    """Resident memory the session added once loaded and warmed up (RSS delta)."""


def _rss() -> int | None:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except Exception:
        return None


def time_models(
    folders: Sequence[Path],
    *,
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    rounds: int = 5,
    threads: int = 0,
    seed: int = 0,
) -> list[DecodeTiming]:
    """Prefill latency and decode tokens/s at batch 1 for each export, alternately in one process:
    each round prefills the same random prompt of ``prompt_tokens`` ids in every model, then
    decodes ``new_tokens`` greedy tokens (eos ignored), the models' order reversed every
    round; statistics are medians over all prompts / tokens, with the share of the CPU other
    processes took while timing."""
    from ..benchmark import _cpu_seconds, _others_share, _stats

    models: list[OnnxCausalLM] = []
    memory: list[int | None] = []
    for folder in folders:
        before = _rss()
        model = OnnxCausalLM(folder, threads=threads, load_tokenizer=False)
        prompt = _prompt(model, prompt_tokens, seed)
        list(_steps(model, prompt, 2))  # warm up
        after = _rss()
        memory.append(after - before if before is not None and after is not None else None)
        models.append(model)
    prompt = _prompt(models[0], prompt_tokens, seed)
    prefill: list[list[float]] = [[] for _ in models]
    decode: list[list[float]] = [[] for _ in models]
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    for r in range(rounds):
        order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
        for i in order:
            times = list(_steps(models[i], prompt, new_tokens))
            prefill[i].append(times[0])
            decode[i].extend(times[1:])
    share = _others_share(cpu_before, _cpu_seconds(), time.perf_counter() - started)
    results = []
    for i in range(len(models)):
        pre, dec = _stats(prefill[i], 1, "CPUExecutionProvider"), _stats(decode[i], 1, "CPUExecutionProvider")
        pre.others_cpu_share = dec.others_cpu_share = share
        tps = round(1000.0 / dec.median_ms, 3) if dec.median_ms > 0 else 0.0
        results.append(DecodeTiming(prefill=pre, decode=dec, decode_tokens_per_s=tps, memory_bytes=memory[i]))
    return results


def _prompt(model: OnnxCausalLM, tokens: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, model.info.vocab_size, size=tokens, dtype=np.int64)


def _steps(model: OnnxCausalLM, prompt: np.ndarray, new_tokens: int) -> Iterator[float]:
    """Seconds of the prefill call, then of each single-token decode call (greedy, eos ignored)."""
    t0 = time.perf_counter()
    logits, cache = model.forward(prompt[None])
    yield time.perf_counter() - t0
    for _ in range(new_tokens):
        token = np.array([[int(np.argmax(logits[0, -1]))]], np.int64)
        t0 = time.perf_counter()
        logits, cache = model.forward(token, cache)
        yield time.perf_counter() - t0
