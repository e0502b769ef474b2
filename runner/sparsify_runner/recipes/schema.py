"""Typed recipes: one pydantic config per modifier, composed into one recipe per experiment type.

The packaged YAML files (``one_shot.yaml`` ...) hold the defaults and their documentation;
these models hold the types and ranges. A modifier takes its own config
(``recipe.config(GMPConfig)``); the recipe a user writes stays a flat mapping of settings.
Every recipe, packaged or a user's ``--recipe`` file merged with ``--recipe-args``, is
validated here, so a bad value fails with one line naming the setting and what it must be
(the field's ``description``), before any work starts.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from ..spec import ExperimentType

AutoOrBool = Literal["auto"] | bool
C = TypeVar("C", bound="Config")


def _setting(description: str, **constraints: Any) -> Any:
    """A required recipe field (defaults come from the packaged YAML) with its rule in words."""
    return Field(description=description, **constraints)


class Config(BaseModel):
    """Base of every config: strict (YAML and JSON give real numbers and booleans, so "0.5" or
    true for a number is a mistake), unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---- one config per modifier (and per pathway-wide concern) -------------------------------
class BenchmarkConfig(Config):
    """The final side-by-side benchmark of baseline and optimized model."""

    benchmark_seconds: float = _setting("a positive number", gt=0)


class UnstructuredPruningConfig(Config):
    """``modifiers.one_shot.UnstructuredPruning``: OBS or magnitude pruning of weights."""

    sparsity: float | None = _setting("null or a number in [0, 1)", ge=0, lt=1)
    pruning_method: Literal["obs", "magnitude"] | None = _setting("null, obs or magnitude")
    pruning_allocation: Literal["erk", "sensitivity"] = _setting("erk or sensitivity")
    sensitivity_samples: int = _setting("a positive integer", ge=1)


class ChannelPruningConfig(Config):
    """``modifiers.one_shot.ChannelPruning``: structured OBS channel removal."""

    macs_reduction: float | None = _setting("null or a number in [0, 1)", ge=0, lt=1)
    round_channels_to: int = _setting("a positive integer", ge=1)
    max_channels_removed: float = _setting("a number in (0, 1)", gt=0, lt=1)
    max_channels_fidelity_loss: float = _setting("a number in [0, 1]", ge=0, le=1)


class Int8SearchConfig(Config):
    """The INT8 search (``modifiers.int8.quantize_int8``): static INT8 chosen by measured fidelity
    and speed."""

    quantize: AutoOrBool = _setting("auto, true or false")
    quant_format: Literal["auto", "qdq", "qoperator"] | None = _setting("null, auto, qdq or qoperator")
    int8_equalization: bool = _setting("true or false")
    int8_candidate_seconds: float = _setting("a positive number", gt=0)
    int8_search_seconds: float = _setting("a positive number", gt=0)


class OutcomeSearchConfig(Config):
    """``outcome.search``: the one-shot candidates an optim level allows, measured and chosen."""

    search_seconds: float = _setting("a positive number", gt=0)
    candidate_seconds: float = _setting("a positive number", gt=0)
    finalists: int = _setting("a positive integer", ge=1)
    acceptance_fraction: float = _setting("a number in [0, 0.9]", ge=0, le=0.9)


class CalibrationConfig(Config):
    """How one-shot splits its samples into calibration and held-out evaluation."""

    calibration_samples: int = _setting("a positive integer", ge=1)
    holdout_fraction: float = _setting("a number in (0, 1)", gt=0, lt=1)
    max_holdout_samples: int = _setting("a positive integer", ge=1)


class PruningScheduleConfig(Config):
    """When a training modifier prunes: a share of the main phase's steps."""

    prune_start_fraction: float = _setting("a number in [0, 1]", ge=0, le=1)
    prune_end_fraction: float = _setting("a number in [0, 1]", ge=0, le=1)


class GMPConfig(PruningScheduleConfig):
    """``modifiers.training.gmp.GMPModifier``: gradual magnitude pruning."""

    sparsity: float | None = _setting("null or a number in [0, 1)", ge=0, lt=1)
    init_sparsity: float = _setting("a number in [0, 1)", ge=0, lt=1)
    update_every_epochs: float = _setting("a positive number", gt=0)
    min_params: int = _setting("an integer >= 0", ge=0)
    prune_first_conv: bool = _setting("true or false")
    prune_depthwise: bool = _setting("true or false")


class StructuredPruningConfig(PruningScheduleConfig):
    """``modifiers.training.structured.StructuredPruner``: channel / head pruning events."""

    macs_reduction: float | None = _setting("null or a number in [0, 1)", ge=0, lt=1)
    structured_events: int = _setting("a positive integer", ge=1)
    round_channels_to: int = _setting("a positive integer", ge=1)


class FixedMasksConfig(Config):
    """``modifiers.training.masks.FixedMasks``: which weights' zeros are held."""

    min_params: int = _setting("an integer >= 0", ge=0)


class DistillationConfig(Config):
    """``modifiers.training.distillation.DistillationModifier`` (0 disables it)."""

    distillation_weight: float = _setting("a number in [0, 1]", ge=0, le=1)
    distillation_temperature: float = _setting("a positive number", gt=0)


class QATConfig(Config):
    """``modifiers.training.qat.FakeQuantModifier`` and its fine-tuning phase."""

    qat: AutoOrBool = _setting("auto, true or false")
    qat_epochs: int = _setting("an integer >= 0 (0: a quarter of the main phase, at least 1)", ge=0)
    qat_lr_scale: float = _setting("a positive number", gt=0)
    qat_weight_bits: int = _setting("an integer in [2, 8]", ge=2, le=8)

    def qat_epoch_count(self, main_epochs: int) -> int:
        return self.qat_epochs or max(1, round(main_epochs / 4))


class Int8ChoiceConfig(Config):
    """The training pathways' INT8 step: static INT8 of the plain and the QAT model, the one
    that keeps more validation accuracy within the budget."""

    quantize: AutoOrBool = _setting("auto, true or false")
    max_int8_accuracy_drop: float = _setting("a number in [0, 1]", ge=0, le=1)
    int8_search_seconds: float = _setting("a positive number", gt=0)
    int8_candidate_seconds: float = _setting("a positive number", gt=0)


# ---- a pathway's recipe = the configs of the modifiers it runs -------------------------------
class Recipe(Config):
    """The typed recipe of one experiment type: its fields are the union of its modifiers'
    configs (flat, so ``--recipe-args '{"sparsity": 0.5}'`` names a setting directly);
    ``config(ConfigClass)`` hands one modifier its own part."""

    def config(self, config_type: type[C]) -> C:
        """This recipe's settings for one modifier, as that modifier's config."""
        return config_type.model_validate({k: getattr(self, k) for k in config_type.model_fields})

    def settings(self) -> dict[str, Any]:
        """Plain values for the report (``settings.recipe`` / the effective settings)."""
        return self.model_dump()


class OneShotRecipe(
    Recipe,
    UnstructuredPruningConfig,
    ChannelPruningConfig,
    Int8SearchConfig,
    OutcomeSearchConfig,
    CalibrationConfig,
    BenchmarkConfig,
):
    """one-shot: the optim level's candidates (pruning, INT8, both) measured, one chosen."""


class TrainingRecipe(Recipe, DistillationConfig, QATConfig, Int8ChoiceConfig, BenchmarkConfig):
    """What both training pathways run after (and beside) their pruning modifiers."""

    def wants_qat(self, int8: bool) -> bool:
        """QAT runs only when INT8 is built at all."""
        return int8 and self.qat in ("auto", True)


class SparseTransferRecipe(TrainingRecipe, FixedMasksConfig):
    """sparse-transfer: fixed masks (+ distillation) -> QAT -> INT8 choice."""


class TrainingAwareRecipe(TrainingRecipe, GMPConfig, StructuredPruningConfig):
    """training-aware: GMP or structured pruning (+ distillation) -> QAT -> INT8 choice."""


RECIPE_TYPES: dict[ExperimentType, type[Recipe]] = {
    ExperimentType.one_shot: OneShotRecipe,
    ExperimentType.sparse_transfer: SparseTransferRecipe,
    ExperimentType.training_aware: TrainingAwareRecipe,
}


def validate_recipe(exp_type: ExperimentType, values: dict[str, Any], source: str) -> Recipe:
    """``values`` as the typed recipe of ``exp_type``; the first problem -> one InputError line."""
    model = RECIPE_TYPES[exp_type]
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise InputError(_first_problem(model, err, source)) from None


def _first_problem(model: type[Recipe], err: ValidationError, source: str) -> str:
    problem = err.errors()[0]
    key = str(problem["loc"][0]) if problem["loc"] else "?"
    field = model.model_fields.get(key)
    if problem["type"] == "extra_forbidden" or field is None:
        return f"unknown recipe key '{key}' in {source}; valid keys: {', '.join(sorted(model.model_fields))}"
    if problem["type"] == "missing":
        return f"recipe setting '{key}' is missing in {source}; add it (see the packaged recipe)"
    return f"recipe setting '{key}' must be {field.description}, got {problem['input']!r}; fix {source}"
