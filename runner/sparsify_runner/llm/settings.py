"""The settings of a text-generation one-shot run, from ``--recipe-args`` (typed, checked).

Defaults fit 2 CPU cores; raise them on a GPU (docs/llm.md). ``--train-samples`` and
``--val-samples`` set the calibration and held-out window counts as they set one-shot's
calibration and held-out samples elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError
from ..spec import Experiment
from .schemes import GROUP_SIZES, SchemeName


@dataclass(frozen=True)
class LlmSettings:
    sequence_length: int = 256
    """Tokens per window, for calibration and for perplexity."""
    calibration_samples: int = 64
    """Calibration windows llm-compressor sees."""
    eval_samples: int = 64
    """Held-out windows perplexity is measured on (the bootstrap resamples these)."""
    group_size: int | None = None
    """4-bit weight group size; None: the largest of 128/64/32/16 dividing every layer's input width."""
    schemes: tuple[SchemeName, ...] | None = None
    """Measure only these of the level's candidates (w4a16, w8a8, w8a16, sparse50-w4a16)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["schemes"] = [s.value for s in self.schemes] if self.schemes is not None else None
        return data


_INT_KEYS = {"sequence_length": 8, "calibration_samples": 1, "eval_samples": 2}


def _positive(key: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"--recipe-args '{key}' must be an integer >= {least}, got {value!r}")
    return value


def settings_from(exp: Experiment) -> LlmSettings:
    """The run's settings; InputError naming the flag for anything text-generation cannot use."""
    if exp.recipe:
        raise InputError(
            "--recipe files are not read for text-generation yet; pass its settings with --recipe-args "
            f"(keys: {', '.join(LlmSettings.__dataclass_fields__)})"
        )
    if exp.eval_metric != "auto":
        raise InputError(
            f"--eval-metric '{exp.eval_metric}' is not measured for text-generation, which reports held-out "
            "perplexity; leave --eval-metric at auto"
        )
    if exp.structure != "unstructured":
        raise InputError(f"--structure {exp.structure} is not available for text-generation; leave it out")
    args = dict(exp.recipe_args)
    unknown = sorted(set(args) - set(LlmSettings.__dataclass_fields__))
    if unknown:
        raise InputError(
            f"--recipe-args key '{unknown[0]}' is not a text-generation setting; known: "
            f"{', '.join(LlmSettings.__dataclass_fields__)}"
        )
    values: dict[str, Any] = {k: _positive(k, args[k], least) for k, least in _INT_KEYS.items() if k in args}
    if exp.train_samples is not None:
        values["calibration_samples"] = exp.train_samples
    if exp.val_samples is not None:
        if exp.val_samples < 2:
            raise InputError(
                "--val-samples must be at least 2 for text-generation (the interval resamples windows)"
            )
        values["eval_samples"] = exp.val_samples
    if args.get("group_size") is not None:
        if args["group_size"] not in GROUP_SIZES:
            raise InputError(
                f"--recipe-args 'group_size' must be one of {list(GROUP_SIZES)} (or null: chosen to fit the "
                f"model), got {args['group_size']!r}"
            )
        values["group_size"] = args["group_size"]
    if args.get("schemes") is not None:
        names = args["schemes"] if isinstance(args["schemes"], list) else [args["schemes"]]
        known = [s.value for s in SchemeName]
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise InputError(f"--recipe-args 'schemes' must list some of {known}, got {args['schemes']!r}")
        values["schemes"] = tuple(SchemeName(n) for n in names)
    return LlmSettings(**values)
