"""A few greedy generations of the dense and the shipped model, side by side in the report.

The prompts are the first ``PROMPT_TOKENS`` tokens of evenly spaced held-out windows (the user's
own text, no invented prompts); each model continues them greedily for at most ``NEW_TOKENS``
tokens (stopping at end-of-sequence). Greedy decoding is deterministic, so the comparison shows
what quantization changed, not sampling noise. Cheap by design: 3 prompts x 16 tokens per model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PROMPTS = 3
PROMPT_TOKENS = 16
NEW_TOKENS = 16


class Generation(BaseModel):
    prompt: str
    dense: str = Field(description="the dense model's greedy continuation")
    shipped: str = Field(description="the shipped model's greedy continuation")
    same: bool = Field(description="the two continuations are the same tokens")
    first_difference: int | None = Field(
        None, description="index of the first generated token where they differ (None: same)"
    )


class GenerationsReport(BaseModel):
    prompt_tokens: int
    max_new_tokens: int
    samples: list[Generation]
    same: int = Field(description="samples whose continuations are token-for-token the same")

    def note(self) -> str:
        return (
            f"greedy generations ({len(self.samples)} held-out prompts of {self.prompt_tokens} tokens, up to "
            f"{self.max_new_tokens} new tokens): {self.same} of {len(self.samples)} continue token for token "
            "as the dense model does (report.html shows them side by side)"
        )


def prompts_from(held_out: Any, count: int = PROMPTS, length: int = PROMPT_TOKENS) -> list[list[int]]:
    """The first ``length`` tokens of ``count`` evenly spaced held-out windows (``[n, seq]`` tensor)."""
    n, seq = int(held_out.shape[0]), int(held_out.shape[1])
    length = min(length, seq)
    picks = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    return [[int(t) for t in held_out[i, :length]] for i in picks]


def greedy(model: Any, prompts: list[list[int]], eos_token_id: int | None, new_tokens: int = NEW_TOKENS):
    """Greedy continuations (token ids, prompt excluded), one prompt at a time (no padding)."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=eos_token_id,
                pad_token_id=eos_token_id,
            )
            out.append([int(t) for t in generated[0, len(prompt) :]])
    return out


def compare(
    tokenizer: Any, prompts: list[list[int]], dense: list[list[int]], shipped: list[list[int]]
) -> GenerationsReport:
    samples = []
    for prompt, a, b in zip(prompts, dense, shipped, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        samples.append(
            Generation(
                prompt=tokenizer.decode(prompt, skip_special_tokens=True),
                dense=tokenizer.decode(a, skip_special_tokens=True),
                shipped=tokenizer.decode(b, skip_special_tokens=True),
                same=first is None,
                first_difference=first,
            )
        )
    return GenerationsReport(
        prompt_tokens=len(prompts[0]) if prompts else 0,
        max_new_tokens=NEW_TOKENS,
        samples=samples,
        same=sum(s.same for s in samples),
    )
