"""Unit tests: optim-level mapping, recipes, npz validation and split, fidelity math, stats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from sparsify_runner.errors import InputError
from sparsify_runner.spec import Experiment, ExperimentType

from .conftest import write_samples


def _exp(**kw) -> Experiment:
    return Experiment(type="one-shot", use_case="custom-thing", model="m.onnx", data="d", **kw)


# ---- optim level ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "expected"), [(0.0, 0.0), (0.1, 0.0), (0.29, 0.0), (0.3, 0.40), (0.65, 0.60), (1.0, 0.80)]
)
def test_one_shot_sparsity_mapping(level, expected):
    from sparsify_runner.recipes import sparsity_for_level

    assert sparsity_for_level(ExperimentType.one_shot, level) == pytest.approx(expected)


def test_training_aware_mapping_and_bounds():
    from sparsify_runner.recipes import sparsity_for_level

    assert sparsity_for_level(ExperimentType.training_aware, 0.3) == pytest.approx(0.60)
    assert sparsity_for_level(ExperimentType.training_aware, 1.0) == pytest.approx(0.95)
    with pytest.raises(InputError, match="outside"):
        sparsity_for_level(ExperimentType.one_shot, 1.5)


# ---- recipes ---------------------------------------------------------------------------
def test_recipe_layers_file_then_args(tmp_path):
    from sparsify_runner.recipes import OneShotRecipe, load_recipe, packaged_recipe

    defaults = packaged_recipe(ExperimentType.one_shot)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsity: 0.5\ncalibration_samples: 32\n")
    out = load_recipe(_exp(recipe_args={"sparsity": 0.6}), recipe)
    assert isinstance(out, OneShotRecipe)
    assert out.sparsity == 0.6 and out.calibration_samples == 32
    assert out.benchmark_seconds == defaults["benchmark_seconds"]


def test_recipe_unknown_keys_named(tmp_path):
    from sparsify_runner.recipes import load_recipe

    with pytest.raises(InputError, match="'sparsityy' in --recipe-args"):
        load_recipe(_exp(recipe_args={"sparsityy": 0.5}), None)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(InputError, match="mapping"):
        load_recipe(_exp(), bad)


# ---- npz ----------------------------------------------------------------------------------
def _specs(tiny_onnx):
    from sparsify_runner.onnx_model import load_static_model

    return load_static_model(tiny_onnx)[1]


def test_npz_loads_with_labels(tiny_onnx, tmp_path):
    from sparsify_runner.data.npz import load_npz_folder

    data = load_npz_folder(write_samples(tmp_path / "d", 6), _specs(tiny_onnx))
    assert len(data.samples) == 6 and data.labels == [0, 1, 2, 3, 4, 5]
    assert data.samples[0]["x"].shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"name": "image"}, r"missing input\(s\) 'x'.*unknown key\(s\) 'image'"),
        ({"shape": (3, 8, 8)}, r"input 'x': expected shape \(3, 16, 16\).*got \(3, 8, 8\)"),
        ({"shape": (1, 3, 16, 16)}, "drop the batch dimension"),
    ],
)
def test_npz_mismatch_names_file_input(tiny_onnx, tmp_path, kwargs, pattern):
    from sparsify_runner.data.npz import load_npz_folder

    folder = write_samples(tmp_path / "d", 2, **kwargs)
    with pytest.raises(InputError, match=pattern) as err:
        load_npz_folder(folder, _specs(tiny_onnx))
    assert "s000.npz" in str(err.value) and "\n" not in str(err.value)


def test_npz_dtype_and_empty_and_partial_labels(tiny_onnx, tmp_path):
    from sparsify_runner.data.npz import load_npz_folder

    specs = _specs(tiny_onnx)
    (tmp_path / "ints").mkdir()
    np.savez(tmp_path / "ints" / "a.npz", x=np.zeros((3, 16, 16), dtype=np.int32))
    with pytest.raises(InputError, match="expected dtype float32, got int32"):
        load_npz_folder(tmp_path / "ints", specs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .npz files"):
        load_npz_folder(tmp_path / "empty", specs)
    mixed = write_samples(tmp_path / "mixed", 2)
    np.savez(mixed / "zz.npz", x=np.zeros((3, 16, 16), dtype=np.float32))
    with pytest.raises(InputError, match="no 'label'"):
        load_npz_folder(mixed, specs)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_npz_folder(tmp_path / "junk", specs)


def test_split_is_deterministic_and_disjoint(tiny_onnx, tmp_path):
    from sparsify_runner.data.npz import load_npz_folder, split_samples

    data = load_npz_folder(write_samples(tmp_path / "d", 50), _specs(tiny_onnx))
    a = split_samples(data, holdout_fraction=0.2, calibration_samples=30)
    b = split_samples(data, holdout_fraction=0.2, calibration_samples=30)
    assert a.holdout_files == b.holdout_files and a.calibration_files == b.calibration_files
    assert len(a.holdout) == 10 and len(a.calibration) == 30
    assert not set(a.holdout_files) & set(a.calibration_files)
    assert a.disjoint and a.holdout_labels is not None


def test_split_with_very_few_samples_says_so(tiny_onnx, tmp_path):
    from sparsify_runner.data.npz import load_npz_folder, split_samples

    data = load_npz_folder(write_samples(tmp_path / "d", 3), _specs(tiny_onnx))
    split = split_samples(data)
    assert not split.disjoint and len(split.calibration) == 3 and len(split.holdout) == 3
    assert "too few" in split.notes[0]


# ---- onnx model -----------------------------------------------------------------------
def test_onnx_validation(tmp_path, dynamic_onnx):
    from sparsify_runner.onnx_model import load_static_model

    with pytest.raises(InputError, match="does not exist"):
        load_static_model(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(InputError, match="not an ONNX model"):
        load_static_model(junk)
    with pytest.raises(InputError, match="dynamic shape"):
        load_static_model(dynamic_onnx)


# ---- fidelity / accuracy --------------------------------------------------------------
def test_fidelity_and_accuracy_math():
    from sparsify_runner.evaluate import accuracy, fidelity

    base = [np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 2.0, 0.0]]), np.array([[0.0, 0.0, 3.0]])]
    opt = [np.array([[1.0, 0.1, 0.0]]), np.array([[0.0, 2.0, 0.0]]), np.array([[3.0, 0.0, 0.0]])]
    fid = fidelity(base, opt)
    assert fid.samples == 3 and fid.top1_agreement == pytest.approx(2 / 3)
    expected_cos = (1 / np.sqrt(1.01) + 1 + 0) / 3
    assert fid.cosine_similarity == pytest.approx(expected_cos, abs=1e-6)
    assert accuracy(base, [0, 1, 0]) == pytest.approx(2 / 3)
    regress = fidelity([np.ones((4, 4))], [np.ones((4, 4)) * 2])
    assert regress.top1_agreement is None and regress.cosine_similarity == pytest.approx(1.0)


# ---- model stats ----------------------------------------------------------------------
def _conv_model(tmp_path: Path, weight: np.ndarray) -> Path:
    w = numpy_helper.from_array(weight.astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])],
        [w],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_model_stats_counts_sparsity_size_and_macs(tmp_path):
    from sparsify_runner.modelstats import layer_sparsity, model_stats

    w = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
    w.reshape(-1)[: w.size // 2] = 0.0
    path = _conv_model(tmp_path, w)
    stats = model_stats(path)
    assert stats.parameters == w.size and stats.sparsity == pytest.approx(0.5)
    assert stats.flops == 8 * 8 * 8 * 4 * 9
    assert stats.file_size_bytes == path.stat().st_size
    assert stats.compressed_size_bytes == len(gzip.compress(path.read_bytes(), compresslevel=6))
    layers = layer_sparsity(path)
    assert [(ly.name, ly.op_type, ly.quantized) for ly in layers] == [("conv", "Conv", False)]


def test_model_stats_of_per_channel_int8_matmul(tmp_path):
    """A per-channel QDQ MatMul weight [K, N] has its zero points along axis 1 (a transformer
    quantized by onnxruntime): zeros are counted per column, not broadcast along K."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from sparsify_runner.modelstats import model_stats

    w = np.random.default_rng(0).standard_normal((6, 10)).astype(np.float32)
    w[:, :5] = 0.0  # half the columns pruned
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 10])],
        [numpy_helper.from_array(w, "w")],
    )
    fp32, int8 = tmp_path / "mm.onnx", tmp_path / "mm-int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"x": np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)}])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(fp32), str(int8), Reader(), per_channel=True, weight_type=QuantType.QInt8)
    stats = model_stats(int8)
    assert stats.sparsity == pytest.approx(0.5)


def test_measure_latency_alternates_models(tiny_onnx):
    from sparsify_runner.benchmark import measure_latency

    a, b = measure_latency([tiny_onnx, tiny_onnx], seconds=0.05, warmup=1, min_iterations=3)
    assert a.iterations == b.iterations >= 3 and a.provider == "CPUExecutionProvider"
    assert a.mean_ms > 0 and a.throughput_items_per_s > 0 and a.p90_ms >= a.median_ms * 0.0
