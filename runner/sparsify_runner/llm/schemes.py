"""The compression schemes a text-generation run can measure, and their llm-compressor recipes.

Which schemes a deployment target gets is policy (``candidates_for``); the algorithms are
llm-compressor's (GPTQ, SmoothQuant, SparseGPT), built here as its modifier objects and never
re-implemented. 4-bit weights are quantized in groups whose size must divide every quantized
layer's input width (``choose_group_size``): SmolLM2's hidden size 576 rejects the usual 128,
so 64 is chosen and the report says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from ..spec import Objective

PREFERRED_GROUP_SIZE = 128
GROUP_SIZES = (128, 64, 32, 16)
SMOOTHING_STRENGTH = 0.8
SPARSITY = 0.5
IGNORED_LAYERS = ("lm_head",)
"""Kept in full precision: the output projection is where 4-bit rounding costs most perplexity."""


class SchemeName(str, Enum):  # noqa: UP042 (plain str mixin, as spec's enums)
    W4A16 = "w4a16"
    W8A8 = "w8a8"
    W8A16 = "w8a16"
    SPARSE50_W4A16 = "sparse50-w4a16"


@dataclass(frozen=True)
class SchemeInfo:
    name: SchemeName
    weight_bits: int
    activation_bits: int | None
    sparsity: float
    grouped: bool
    how: str


SCHEMES: dict[SchemeName, SchemeInfo] = {
    SchemeName.W4A16: SchemeInfo(
        SchemeName.W4A16, 4, None, 0.0, True, "GPTQ 4-bit weights in groups, 16-bit activations"
    ),
    SchemeName.W8A8: SchemeInfo(
        SchemeName.W8A8,
        8,
        8,
        0.0,
        False,
        f"SmoothQuant (strength {SMOOTHING_STRENGTH}) + GPTQ 8-bit per-channel weights, "
        "dynamic per-token 8-bit activations",
    ),
    SchemeName.W8A16: SchemeInfo(
        SchemeName.W8A16, 8, None, 0.0, False, "GPTQ 8-bit per-channel weights, 16-bit activations"
    ),
    SchemeName.SPARSE50_W4A16: SchemeInfo(
        SchemeName.SPARSE50_W4A16,
        4,
        None,
        SPARSITY,
        True,
        f"SparseGPT {SPARSITY:.0%} unstructured, then 4-bit weights in groups rounded to nearest "
        "(GPTQ would refill the zeros)",
    ),
}


def candidates_for(
    device: Literal["cpu", "cuda"], objective: Objective, *, four_bit: bool
) -> tuple[SchemeName, ...]:
    """The schemes a target can run, most compressed first. vLLM on GPU: W4A16 and W8A8 (its
    int8 GEMMs need 8-bit activations); CPU: weight-only (W4A16, W8A16). Sparsity only for the
    size objective: no runtime here turns zeros into speed."""
    eight_bit = SchemeName.W8A8 if device == "cuda" else SchemeName.W8A16
    if not four_bit:
        return (eight_bit,)
    if objective is Objective.size:
        return (SchemeName.SPARSE50_W4A16, SchemeName.W4A16, eight_bit)
    return (SchemeName.W4A16, eight_bit)


@dataclass(frozen=True)
class GroupChoice:
    size: int
    note: str | None
    """Why the size is not the preferred one, when it is not."""


def choose_group_size(in_features: Iterable[int], preferred: int = PREFERRED_GROUP_SIZE) -> GroupChoice:
    """The largest group size (at most ``preferred``) dividing every quantized layer's input
    width; ValueError when none of GROUP_SIZES does."""
    widths = sorted(set(in_features))
    for size in (s for s in GROUP_SIZES if s <= preferred):
        if all(w % size == 0 for w in widths):
            if size == preferred:
                return GroupChoice(size, None)
            misfit = [w for w in widths if w % preferred]
            return GroupChoice(
                size,
                f"4-bit group size {size}, not {preferred}: input width(s) {misfit} of the quantized "
                f"layers are not multiples of {preferred}",
            )
    raise ValueError(f"no group size in {GROUP_SIZES} divides the layer input widths {widths}")


def quantized_in_features(model: Any) -> list[int]:
    """Input widths of the Linear layers the schemes quantize (all but IGNORED_LAYERS)."""
    import torch

    return [
        m.in_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] not in IGNORED_LAYERS
    ]


def build_recipe(name: SchemeName, group_size: int) -> list[Any]:
    """llm-compressor modifiers for one scheme (imported here: the llm extra)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier

    ignore = list(IGNORED_LAYERS)
    if name is SchemeName.W8A8:
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        return [
            SmoothQuantModifier(smoothing_strength=SMOOTHING_STRENGTH),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore),
        ]
    if name is SchemeName.W8A16:  # explicit: the W8A16 preset is grouped by 128 in compressed-tensors 0.19
        per_channel = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel")
        scheme = QuantizationScheme(targets=["Linear"], weights=per_channel)
        return [GPTQModifier(config_groups={"group_0": scheme}, ignore=ignore)]
    four_bit = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size
        ),
    )
    if name is SchemeName.W4A16:
        return [GPTQModifier(config_groups={"group_0": four_bit}, ignore=ignore)]
    # Sparse + 4-bit: GPTQ's error feedback would refill the pruned weights, so the 4-bit step after
    # SparseGPT rounds to nearest (QuantizationModifier), which keeps every zero a zero.
    from llmcompressor.modifiers.pruning import SparseGPTModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [
        SparseGPTModifier(sparsity=SPARSITY, mask_structure="0:0", targets=["Linear"], ignore=ignore),
        QuantizationModifier(config_groups={"group_0": four_bit}, ignore=ignore),
    ]
