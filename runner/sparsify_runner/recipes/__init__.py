"""Recipes: optim level -> settings, per experiment type. Recipes are YAML data, not code.

``sparsity_for_level`` is the original product's optim-level mapping; ``load_recipe``
merges the packaged defaults with a user recipe file and ``--recipe-args`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..spec import Experiment, ExperimentType

RECIPES_DIR = Path(__file__).resolve().parent
INT8_ONLY_BELOW = 0.3

# (sparsity at level 0.3, sparsity at level 1.0), linear in between.
_SPARSITY_RANGE: dict[ExperimentType, tuple[float, float]] = {
    ExperimentType.one_shot: (0.40, 0.80),
    ExperimentType.training_aware: (0.60, 0.95),
    ExperimentType.sparse_transfer: (0.60, 0.95),
}


def sparsity_for_level(exp_type: ExperimentType, level: float) -> float:
    """Target unstructured sparsity for an optim level: 0 below 0.3, then linear to 1.0."""
    if not 0.0 <= level <= 1.0:
        raise InputError(f"optim level {level} is outside [0, 1]; pass --optim-level between 0 and 1")
    if level < INT8_ONLY_BELOW:
        return 0.0
    low, high = _SPARSITY_RANGE[exp_type]
    return round(low + (high - low) * (level - INT8_ONLY_BELOW) / (1.0 - INT8_ONLY_BELOW), 6)


# (MACs removed at level 0.3, at level 1.0) for channel pruning, linear in between.
_MACS_RANGE: dict[ExperimentType, tuple[float, float]] = {
    ExperimentType.one_shot: (0.30, 0.75),
    ExperimentType.training_aware: (0.30, 0.75),
}


def macs_reduction_for_level(exp_type: ExperimentType, level: float) -> float:
    """Fraction of MACs channel pruning removes at an optim level: 0 below 0.3, then linear."""
    if not 0.0 <= level <= 1.0:
        raise InputError(f"optim level {level} is outside [0, 1]; pass --optim-level between 0 and 1")
    if level < INT8_ONLY_BELOW:
        return 0.0
    low, high = _MACS_RANGE[exp_type]
    return round(low + (high - low) * (level - INT8_ONLY_BELOW) / (1.0 - INT8_ONLY_BELOW), 6)


def packaged_recipe(name: str) -> dict[str, Any]:
    """The defaults shipped with the runner, e.g. ``packaged_recipe("one_shot")``."""
    return yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}


def _read_user_recipe(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(
            f"recipe file '{path}' cannot be read ({err.strerror}); check the --recipe path"
        ) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"recipe file '{path}' is not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"recipe file '{path}' must be a YAML mapping of settings (key: value)")
    return data


def _merge(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise InputError(
            f"unknown recipe key(s) {', '.join(repr(k) for k in unknown)} in {source}; "
            f"valid keys: {', '.join(sorted(base))}"
        )
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(base[key], dict) and isinstance(value, dict):
            merged[key] = _merge(base[key], value, f"{source} ({key})")
        else:
            merged[key] = value
    return merged


def load_recipe(defaults: dict[str, Any], exp: Experiment, recipe_path: Path | None) -> dict[str, Any]:
    """defaults <- user recipe YAML <- ``exp.recipe_args``; unknown keys -> InputError naming them."""
    settings = dict(defaults)
    if recipe_path is not None:
        settings = _merge(settings, _read_user_recipe(Path(recipe_path)), f"recipe file '{recipe_path}'")
    if exp.recipe_args:
        settings = _merge(settings, dict(exp.recipe_args), "--recipe-args")
    return settings
