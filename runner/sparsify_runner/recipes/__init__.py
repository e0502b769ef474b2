"""Recipes: what each pathway does at an optim level, as data.

- ``levels``: the optim level policy (sparsity and MAC ranges, the INT8-only threshold).
- ``schema``: one typed pydantic recipe per experiment type (types, ranges, descriptions).
- ``<type>.yaml``: the packaged defaults, documented. ``load_recipe`` merges them with a
  user's ``--recipe`` file and ``--recipe-args`` and validates the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..spec import Experiment, ExperimentType
from .levels import (
    INT8_ONLY_BELOW,
    int8_wanted,
    macs_reduction_for_level,
    prunes,
    sparsity_for_level,
    training_mode,
)
from .schema import (
    OneShotRecipe,
    Recipe,
    SparseTransferRecipe,
    TrainingAwareRecipe,
    TrainingRecipe,
    validate_recipe,
)

__all__ = [
    "INT8_ONLY_BELOW",
    "OneShotRecipe",
    "Recipe",
    "SparseTransferRecipe",
    "TrainingAwareRecipe",
    "TrainingRecipe",
    "int8_wanted",
    "load_recipe",
    "macs_reduction_for_level",
    "packaged_recipe",
    "prunes",
    "sparsity_for_level",
    "training_mode",
]

RECIPES_DIR = Path(__file__).resolve().parent


def packaged_recipe(exp_type: ExperimentType) -> dict[str, Any]:
    """The defaults shipped with the runner for one experiment type, as plain data."""
    name = exp_type.value.replace("-", "_")
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


def _merge(base: dict[str, Any], overrides: dict[str, Any], exp_type: ExperimentType, source: str):
    """``base`` with ``overrides`` on top, each override validated against the schema (so a
    bad key or value names the place it came from)."""
    merged = {**base, **overrides}
    validate_recipe(exp_type, merged, source)
    return merged


def load_recipe(exp: Experiment, recipe_path: Path | None = None) -> Any:
    """packaged defaults <- user recipe YAML <- ``exp.recipe_args``, as the typed recipe of
    ``exp.type``; an unknown key or a bad value -> InputError naming it and its source."""
    exp_type = exp.type
    settings = packaged_recipe(exp_type)
    validate_recipe(exp_type, settings, "the packaged recipe")
    if recipe_path is not None:
        user = _read_user_recipe(Path(recipe_path))
        settings = _merge(settings, user, exp_type, f"recipe file '{recipe_path}'")
    if exp.recipe_args:
        settings = _merge(settings, dict(exp.recipe_args), exp_type, "--recipe-args")
    return validate_recipe(exp_type, settings, "the recipe")
