"""INT8 search, stage 3: which nodes add the most quantization error (ranked), so the search
can keep the worst ones in FP32."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from ...evaluate import make_session
from ...onnx_graph.capture import with_outputs
from .candidates import CalibrationReader, Sample
from .prepare import WEIGHT_OPS


def node_sensitivity(
    float_path: Path, qdq_path: Path, samples: list[Sample], batch: int
) -> list[tuple[str, float]]:
    """Rank nodes by the relative activation error their quantization adds (largest first).

    Every float node output of the FP32 graph is exposed in both models; the QDQ model keeps
    those tensor names (its Q/DQ pairs hang off them), so err(t) = ||q(t) - f(t)|| / ||f(t)||
    and a node's added error is err(output) - max err(inputs)."""
    fmodel = onnx.load(str(float_path))
    qmodel = onnx.load(str(qdq_path))
    inferred = onnx.shape_inference.infer_shapes(fmodel)
    float_tensors = {
        vi.name
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    q_produced = {o for n in qmodel.graph.node for o in n.output}
    nodes = [n for n in fmodel.graph.node if n.output and n.output[0] in float_tensors]
    tensors = sorted({n.output[0] for n in nodes} & q_produced)
    if not tensors:
        return []
    with tempfile.TemporaryDirectory(prefix="sparsify-sens-") as tmp:
        fa, qa = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(with_outputs(fmodel, tensors), str(fa))
        onnx.save(with_outputs(qmodel, tensors), str(qa))
        fs, qs = make_session(fa), make_session(qa)
        err: dict[str, list[float]] = {t: [] for t in tensors}
        reader = CalibrationReader(samples, batch)
        for feed in reader._feeds():
            fo = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, feed), strict=True))
            qo = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, feed), strict=True))
            for t in tensors:
                f, q = fo[t].astype(np.float64), qo[t].astype(np.float64)
                err[t].append(float(np.linalg.norm(q - f) / (np.linalg.norm(f) + 1e-12)))
    mean = {t: float(np.mean(v)) for t, v in err.items()}
    # The quantizer folds Relu/Clip into the preceding Conv (its output tensor disappears):
    # attribute the activation's error to that Conv, the node nodes_to_exclude acts on.
    producer = {o: n for n in fmodel.graph.node for o in n.output}
    ranked = []
    for n in nodes:
        out = n.output[0]
        if out not in mean:
            continue
        owner = n
        if n.op_type in ("Relu", "Clip") and n.input and n.input[0] in producer:
            prev = producer[n.input[0]]
            if prev.op_type in WEIGHT_OPS and prev.output[0] not in q_produced:
                owner = prev
        upstream = max((mean.get(i, 0.0) for i in owner.input), default=0.0)
        ranked.append((owner.name, mean[out] - upstream))
    ranked.sort(key=lambda x: x[1], reverse=True)
    return ranked
