"""Per-layer sparsity allocation: global target met, sensitive layers protected."""

from __future__ import annotations

import pytest
from sparsify_runner.kernels.allocation import AllocationPolicy, LayerProfile, allocate

LAYERS = [
    LayerProfile("stem", 864, "first"),
    LayerProfile("dw1", 288, "depthwise"),
    LayerProfile("pw_small", 512, "normal"),
    LayerProfile("pw_a", 150_000, "normal"),
    LayerProfile("dw2", 8_640, "depthwise"),
    LayerProfile("pw_b", 400_000, "normal"),
    LayerProfile("conv_c", 600_000, "normal"),
    LayerProfile("fc", 500_000, "classifier"),
]


@pytest.mark.parametrize("target", [0.0, 0.4, 0.6, 0.8])
def test_global_target_met_and_sensitive_layers_protected(target: float) -> None:
    plan = allocate(LAYERS, target)
    total = sum(layer.params for layer in LAYERS)
    zeros = sum(a.n_prune for a in plan.layers)
    assert zeros / total == pytest.approx(target, abs=1e-4)
    assert plan.planned == pytest.approx(target, abs=1e-4)
    by = {layer.name: a for layer, a in zip(LAYERS, plan.layers, strict=True)}
    for name in ("stem", "dw1", "dw2", "pw_small"):
        assert by[name].n_prune == 0, by[name].note
        assert "dense" in by[name].note
    assert by["pw_small"].role == "small"
    if target > 0:
        assert 0 < by["fc"].sparsity < by["pw_a"].sparsity
        assert by["pw_a"].sparsity == pytest.approx(by["conv_c"].sparsity, abs=1e-4)
        assert "classifier" in by["fc"].note


def test_caps_and_unreachable_target_are_reported() -> None:
    layers = [LayerProfile("stem", 50_000, "first"), LayerProfile("a", 50_000, "normal")]
    plan = allocate(layers, 0.6)
    assert plan.layers[1].sparsity == pytest.approx(AllocationPolicy().normal_cap, abs=1e-4)
    assert plan.planned < 0.6
    assert plan.notes and "out of reach" in plan.notes[0]


def test_small_threshold_scales_with_model_size() -> None:
    layers = [LayerProfile("a", 6_000, "normal"), LayerProfile("b", 9_000_000, "normal")]
    plan = allocate(layers, 0.5)
    assert plan.layers[0].role == "small" and plan.layers[0].n_prune == 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_bad_target_raises(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        allocate(LAYERS, bad)


def test_erk_weighting_prunes_wide_layers_more_than_narrow_ones() -> None:
    layers = [
        LayerProfile("expand_32_to_192", 6_144, "normal", (192, 32, 1, 1)),
        LayerProfile("project_960_to_160", 153_600, "normal", (160, 960, 1, 1)),
        LayerProfile("conv3x3_256", 589_824, "normal", (256, 256, 3, 3)),
        LayerProfile("fc", 1_280_000, "classifier", (1000, 1280)),
    ]
    plan = allocate(layers, 0.5)
    s = [a.sparsity for a in plan.layers]
    assert s[0] < s[1] < s[2]
    assert plan.planned == pytest.approx(0.5, abs=1e-4)
    uniform = allocate(layers, 0.5, AllocationPolicy(erk_power=0.0))
    assert uniform.layers[0].sparsity == pytest.approx(uniform.layers[2].sparsity, abs=1e-4)
    # the classifier gets classifier_factor x the rate a normal layer of its shape would get
    as_normal = allocate([*layers[:3], LayerProfile("fc", 1_280_000, "normal", (1000, 1280))], 0.5)
    lam_ratio = plan.layers[3].sparsity / plan.layers[0].sparsity
    normal_ratio = as_normal.layers[3].sparsity / as_normal.layers[0].sparsity
    assert lam_ratio == pytest.approx(AllocationPolicy().classifier_factor * normal_ratio, rel=1e-2)


def test_classifier_is_capped_below_normal_layers_and_the_budget_still_met() -> None:
    """MobileNetV2's tail at its level-0.8 target: ERK alone would take the wide classifier
    (one calibration row per sample, the weakest OBS compensation) above 0.8; the cap holds it
    at 0.8 and the convs take the difference."""
    layers = [
        LayerProfile("project_960_to_320", 307_200, "normal", (320, 960, 1, 1)),
        LayerProfile("expand_320_to_1280", 409_600, "normal", (1280, 320, 1, 1)),
        LayerProfile("fc", 1_280_000, "classifier", (1000, 1280)),
    ]
    policy = AllocationPolicy()
    uncapped = allocate(layers, 0.686, AllocationPolicy(classifier_cap=policy.normal_cap))
    assert uncapped.layers[2].sparsity > policy.classifier_cap
    plan = allocate(layers, 0.686)
    assert plan.layers[2].sparsity == pytest.approx(policy.classifier_cap, abs=1e-4)
    assert plan.layers[0].sparsity > uncapped.layers[0].sparsity
    assert plan.planned == pytest.approx(0.686, abs=1e-4)
