"""Typed recipes and the optim level policy: every packaged recipe validates, bad values fail
with one line naming the setting (from the schema), levels map as the original defined."""

from __future__ import annotations

import pytest
from sparsify_runner.errors import InputError
from sparsify_runner.recipes import (
    OneShotRecipe,
    SparseTransferRecipe,
    TrainingAwareRecipe,
    int8_wanted,
    load_recipe,
    macs_reduction_for_level,
    packaged_recipe,
    sparsity_for_level,
    training_mode,
)
from sparsify_runner.recipes.schema import RECIPE_TYPES, validate_recipe
from sparsify_runner.spec import Experiment, ExperimentType


def _exp(exp_type: str, **kw) -> Experiment:
    use_case = "custom-thing" if exp_type == "one-shot" else "image-classification"
    return Experiment(type=exp_type, use_case=use_case, model="m.onnx", data="d", **kw)


@pytest.mark.parametrize("exp_type", list(ExperimentType))
def test_packaged_recipes_are_complete_and_valid(exp_type):
    defaults = packaged_recipe(exp_type)
    model = RECIPE_TYPES[exp_type]
    assert set(defaults) == set(model.model_fields)  # the YAML documents every field, no more
    recipe = validate_recipe(exp_type, defaults, "test")
    assert recipe.settings() == defaults


def test_load_recipe_returns_the_type_of_the_experiment():
    assert isinstance(load_recipe(_exp("one-shot")), OneShotRecipe)
    assert isinstance(load_recipe(_exp("training-aware")), TrainingAwareRecipe)
    assert isinstance(load_recipe(_exp("sparse-transfer")), SparseTransferRecipe)


@pytest.mark.parametrize(
    ("exp_type", "args", "message"),
    [
        (
            "one-shot",
            {"sparsity": 1.2},
            "recipe setting 'sparsity' must be null or a number in [0, 1), got 1.2",
        ),
        ("one-shot", {"sparsity": True}, "recipe setting 'sparsity' must be null or a number in [0, 1)"),
        ("one-shot", {"pruning_method": "random"}, "'pruning_method' must be null, obs or magnitude"),
        ("one-shot", {"calibration_samples": 0}, "'calibration_samples' must be a positive integer, got 0"),
        ("one-shot", {"calibration_samples": "64"}, "'calibration_samples' must be a positive integer"),
        ("training-aware", {"qat": "sometimes"}, "'qat' must be auto, true or false, got 'sometimes'"),
        ("training-aware", {"qat_epochs": -1}, "'qat_epochs' must be an integer >= 0"),
        ("training-aware", {"prune_depthwise": "yes"}, "'prune_depthwise' must be true or false"),
        ("sparse-transfer", {"quantize": "maybe"}, "'quantize' must be auto, true or false"),
        ("sparse-transfer", {"sparsity": 0.5}, "unknown recipe key 'sparsity' in --recipe-args; valid keys:"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_setting(exp_type, args, message):
    with pytest.raises(InputError) as err:
        load_recipe(_exp(exp_type, recipe_args=args))
    text = str(err.value)
    assert message in text and "\n" not in text


def test_recipe_file_errors_name_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("int8_search_seconds: -5\n")
    with pytest.raises(
        InputError, match=r"'int8_search_seconds' must be a positive number, got -5; fix recipe file"
    ):
        load_recipe(_exp("training-aware"), path)


def test_level_policy():
    assert training_mode(0.0, "unstructured") == "baseline"
    assert training_mode(0.2, "channels") == "quantization-only"
    assert training_mode(0.3, "channels") == "channels"
    assert training_mode(0.9, "unstructured") == "unstructured"
    assert int8_wanted("auto", 0.0) is False and int8_wanted("auto", 0.1) is True
    assert int8_wanted(False, 0.9) is False and int8_wanted(True, 0.0) is True
    assert macs_reduction_for_level(ExperimentType.training_aware, 0.29) == 0.0
    assert macs_reduction_for_level(ExperimentType.one_shot, 0.3) == pytest.approx(0.30)
    assert macs_reduction_for_level(ExperimentType.one_shot, 1.0) == pytest.approx(0.75)
    assert sparsity_for_level(ExperimentType.sparse_transfer, 0.65) == pytest.approx(0.775)


def test_qat_epochs_auto_is_a_quarter_of_the_main_phase():
    recipe = load_recipe(_exp("training-aware"))
    assert recipe.qat_epoch_count(8) == 2 and recipe.qat_epoch_count(1) == 1
    assert recipe.wants_qat(True) and not recipe.wants_qat(False)
    explicit = load_recipe(_exp("training-aware", recipe_args={"qat_epochs": 3, "qat": False}))
    assert explicit.qat_epoch_count(8) == 3 and not explicit.wants_qat(True)


@pytest.mark.parametrize("exp_type", list(ExperimentType))
def test_example_user_recipes_validate_and_override(exp_type):
    """examples/recipes/<type>.yaml (the documented examples) load through the same schema."""
    from pathlib import Path

    import yaml

    path = (
        Path(__file__).resolve().parents[2]
        / "examples"
        / "recipes"
        / f"{exp_type.value.replace('-', '_')}.yaml"
    )
    recipe = load_recipe(_exp(exp_type.value), path)
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(recipe, key) == value


def test_a_recipe_is_its_modifiers_configs_and_hands_each_its_part():
    from sparsify_runner.recipes.schema import (
        ChannelPruningConfig,
        GMPConfig,
        Int8SearchConfig,
        StructuredPruningConfig,
        UnstructuredPruningConfig,
    )

    one_shot = load_recipe(_exp("one-shot", recipe_args={"round_channels_to": 4, "sparsity": 0.5}))
    channels = one_shot.config(ChannelPruningConfig)
    assert isinstance(channels, ChannelPruningConfig) and channels.round_channels_to == 4
    assert one_shot.config(UnstructuredPruningConfig).sparsity == 0.5
    assert set(Int8SearchConfig.model_fields) <= set(OneShotRecipe.model_fields)
    # a setting two modifiers share (the pruning schedule) reaches both
    ta = load_recipe(_exp("training-aware", recipe_args={"prune_end_fraction": 0.4}))
    assert (
        ta.config(GMPConfig).prune_end_fraction
        == ta.config(StructuredPruningConfig).prune_end_fraction
        == 0.4
    )
    with pytest.raises(AttributeError):
        ta.config(ChannelPruningConfig)  # not a training-aware modifier


@pytest.mark.parametrize("exp_type", list(ExperimentType))
def test_each_yaml_section_holds_the_settings_of_the_configs_it_names(exp_type):
    """The packaged YAML is laid out by stage: each '# -- ... (XConfig, ...)' section lists
    only settings of the configs it names, so the file reads as the modifiers it runs."""
    import re
    from pathlib import Path

    from sparsify_runner.recipes import schema

    text = (Path(schema.__file__).parent / f"{exp_type.value.replace('-', '_')}.yaml").read_text()
    sections = re.split(r"(?m)^# -- ", text)[1:]
    assert sections
    seen: set[str] = set()
    for section in sections:
        header, _, body = section.partition("\n")
        configs = [getattr(schema, name) for name in re.findall(r"\b(\w+Config)\b", header)]
        assert configs, header
        allowed = set().union(*(c.model_fields for c in configs))
        keys = set(re.findall(r"(?m)^(\w+):", body))
        assert keys <= allowed, (header, keys - allowed)
        seen |= keys
    assert seen == set(RECIPE_TYPES[exp_type].model_fields)
