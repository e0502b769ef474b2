"""prune_onnx end to end on tiny ONNX graphs: valid output, target met, OBS beats magnitude."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from sparsify_runner.errors import InputError
from sparsify_runner.modifiers.onnx_pruning import PruneResult, prune_onnx
from sparsify_runner.onnx_graph.capture import SegmentedRunner, initializer_map
from sparsify_runner.onnx_graph.layers import find_layers


def _run(model: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[0].name
    return np.concatenate([sess.run([name], {k: v[None] for k, v in s.items()})[0] for s in samples])


def _signature(model: onnx.ModelProto) -> tuple:
    return (
        [(v.name, str(v.type)) for v in model.graph.input],
        [(v.name, str(v.type)) for v in model.graph.output],
    )


def _check_valid(result: PruneResult, original: onnx.ModelProto, target: float) -> None:
    onnx.checker.check_model(result.model, full_check=True)
    assert _signature(result.model) == _signature(original)
    assert result.achieved_sparsity == pytest.approx(target, abs=0.02)
    pruned = [layer for layer in result.layers if layer.sparsity > 0 and not layer.note.startswith("skipped")]
    assert pruned, "nothing was pruned"
    assert all(layer.note for layer in result.layers)


def _error(model: onnx.ModelProto, dense_out: np.ndarray, samples) -> float:
    return float(np.linalg.norm(_run(model, samples) - dense_out) / np.linalg.norm(dense_out))


def test_cnn_obs_valid_and_better_than_magnitude(cnn_onnx, cnn_data) -> None:
    calib, held_out = cnn_data
    before = cnn_onnx.SerializeToString()
    dense = _run(cnn_onnx, held_out)
    obs = prune_onnx(cnn_onnx, calib, 0.6, method="obs")
    mag = prune_onnx(cnn_onnx, calib, 0.6, method="magnitude")
    assert cnn_onnx.SerializeToString() == before, "the input model must not be modified"
    for res in (obs, mag):
        _check_valid(res, cnn_onnx, 0.6)
    notes = {layer.op_type + ":" + layer.note.split(":", 1)[1].strip()[:10] for layer in obs.layers}
    assert any("first" in n for n in notes) and any("depthwise" in n for n in notes)
    by = {layer.name: layer for layer in obs.layers}
    dw = [layer for layer in obs.layers if "depthwise" in layer.note]
    assert dw and all(layer.sparsity == 0 for layer in dw)
    head = [layer for layer in obs.layers if layer.op_type == "Gemm"]
    assert head and "classifier" in head[0].note
    assert [layer.sparsity for layer in obs.layers] == pytest.approx(
        [by[layer.name].sparsity for layer in mag.layers], abs=1e-9
    )
    err_obs, err_mag = _error(obs.model, dense, held_out), _error(mag.model, dense, held_out)
    assert err_obs < err_mag, (err_obs, err_mag)
    assert obs.method == "obs" and obs.timings_s["total_s"] > 0


def test_transformer_matmul_graph(transformer_onnx, transformer_data) -> None:
    calib, held_out = transformer_data
    dense = _run(transformer_onnx, held_out)
    obs = prune_onnx(transformer_onnx, calib, 0.5, method="obs")
    mag = prune_onnx(transformer_onnx, calib, 0.5, method="magnitude")
    for res in (obs, mag):
        _check_valid(res, transformer_onnx, 0.5)
    by = {layer.name: layer for layer in obs.layers}
    assert set(by) >= {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "ffn_up",
        "ffn_down",
        "head",
        "via_transpose",
        "tied_a",
        "tied_b",
    }
    assert "scores" not in by and "attn_v" not in by  # activation x activation
    assert "not an initializer" in by["via_transpose"].note and "Transpose" in by["via_transpose"].note
    assert "shared" in by["tied_a"].note and "shared" in by["tied_b"].note
    for name in ("q_proj", "k_proj", "v_proj"):
        assert "first" in by[name].note and by[name].sparsity == 0
    assert "classifier" in by["head"].note and 0 < by["head"].sparsity < by["ffn_up"].sparsity
    # skipped weights are untouched
    w_before = initializer_map(transformer_onnx)["Wtied"]
    w_after = initializer_map(obs.model)["Wtied"]
    assert np.array_equal(numpy_helper.to_array(w_before), numpy_helper.to_array(w_after))
    err_obs, err_mag = _error(obs.model, dense, held_out), _error(mag.model, dense, held_out)
    assert err_obs < err_mag, (err_obs, err_mag)


def test_segmented_capture_matches_full_model(cnn_onnx, cnn_data) -> None:
    """Running the graph in segments yields the same intermediate tensors as one full run."""
    samples = cnn_data[0][:3]
    layers, _ = find_layers(cnn_onnx)
    names = [layer.data_input for layer in layers]
    full = onnx.ModelProto()
    full.CopyFrom(cnn_onnx)
    full.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    sess = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = [dict(zip(names, sess.run(names, {"x": s["x"][None]}), strict=True)) for s in samples]
    runner = SegmentedRunner(cnn_onnx, [{"x": s["x"][None]} for s in samples], initializer_map(cnn_onnx))
    got: dict[str, list[np.ndarray]] = {}
    for name in names:  # one target per capture: the finest segmentation
        runner.capture([name], lambda n, a: got.setdefault(n, []).append(a))
    for name in names:
        for i in range(len(samples)):
            np.testing.assert_allclose(got[name][i], expected[i][name], rtol=1e-4, atol=1e-5)


def test_zero_sparsity_keeps_weights_and_magnitude_needs_no_data(cnn_onnx) -> None:
    res = prune_onnx(cnn_onnx, [], 0.0)
    for a, b in zip(cnn_onnx.graph.initializer, res.model.graph.initializer, strict=True):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    mag = prune_onnx(cnn_onnx, [], 0.5, method="magnitude", show_progress=True)
    assert mag.achieved_sparsity == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("bad", [1.0, -0.01, 1.5, float("nan"), "half", True])
def test_bad_sparsity_raises(cnn_onnx, cnn_data, bad) -> None:
    with pytest.raises(InputError, match="target sparsity"):
        prune_onnx(cnn_onnx, cnn_data[0][:2], bad)


def test_bad_method_and_calibration_raise(cnn_onnx, cnn_data) -> None:
    with pytest.raises(InputError, match="unknown pruning method 'sparsegpt2'"):
        prune_onnx(cnn_onnx, cnn_data[0][:2], 0.5, method="sparsegpt2")
    with pytest.raises(InputError, match="needs calibration samples"):
        prune_onnx(cnn_onnx, [], 0.5)
    with pytest.raises(InputError, match="lacks model input"):
        prune_onnx(cnn_onnx, [{"image": np.zeros((3, 16, 16), np.float32)}], 0.5)
    with pytest.raises(InputError, match="without the batch dimension"):
        prune_onnx(cnn_onnx, [{"x": np.zeros((1, 3, 16, 16), np.float32)}], 0.5)
