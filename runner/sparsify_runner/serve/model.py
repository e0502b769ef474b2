"""The model behind the server: where it comes from (a file, a run's output folder, s3://),
its onnxruntime session, its protocol metadata, whether it can batch, and its serving card."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import model_card
from ..errors import InputError
from .protocol import ORT_TYPES, ModelMetadata, TensorMetadata

MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"


@dataclass
class ModelSource:
    """A resolved ``MODEL.onnx|RUN_DIR|s3://...`` argument."""

    path: Path
    name: str
    folder: Path
    """Where files published beside the model (``tokenizer/``) live."""
    deploy_batch_size: int | None = None


def _valid_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "model"
    return cleaned


def resolve(source: str, name: str | None = None) -> ModelSource:
    """A path to an .onnx file, a run's output folder (model.onnx + report.json), or any
    storage URI (``s3://bucket/runs/exp1`` or ``.../model.onnx``) fetched through the runner's
    storage module. The name defaults to the experiment's name, else the folder or file stem."""
    from .. import storage

    path = storage.fetch(source, what="model")
    report_name, batch = None, None
    if path.is_dir():
        folder = path
        path = folder / MODEL_FILE
        if not path.is_file():
            raise InputError(
                f"'{source}' is a folder without {MODEL_FILE}; pass a run's output folder or an .onnx file"
            )
        report = folder / REPORT_FILE
        if report.is_file():
            try:
                exp = json.loads(report.read_text(encoding="utf-8")).get("experiment") or {}
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                exp = {}
            report_name = exp.get("name")
            batch = (exp.get("deploy") or {}).get("batchSize")
        default = report_name or source.rstrip("/").rsplit("/", 1)[-1] or folder.name
    else:
        folder = path.parent
        default = Path(source.rstrip("/").rsplit("/", 1)[-1]).stem or path.stem
    return ModelSource(
        path=path,
        name=_valid_name(name or default),
        folder=folder,
        deploy_batch_size=int(batch) if isinstance(batch, int) and batch > 0 else None,
    )


def _dims(shape) -> list[int]:
    return [int(d) if isinstance(d, int) and d > 0 else -1 for d in shape]


@dataclass
class ServedModel:
    name: str
    path: Path
    folder: Path
    session: object
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    card: model_card.ServingInfo | None
    batchable: bool
    """Every input and output has a dynamic first (batch) dimension."""
    deploy_batch_size: int | None = None

    @property
    def metadata(self) -> ModelMetadata:
        return ModelMetadata(name=self.name, inputs=self.inputs, outputs=self.outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One onnxruntime call; every output by name."""
        names = [o.name for o in self.outputs]
        values = self.session.run(names, feeds)
        return dict(zip(names, values, strict=True))


def load(source: ModelSource, *, device: str = "cpu", threads: int = 0) -> ServedModel:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError("--device cuda: this onnxruntime has no CUDA provider; use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(source.path), sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"model '{source.path}' cannot be loaded by onnxruntime: {first}") from None

    def tensors(items) -> list[TensorMetadata]:
        out = []
        for t in items:
            datatype = ORT_TYPES.get(t.type)
            if datatype is None:
                raise InputError(
                    f"model '{source.path}': tensor '{t.name}' has type {t.type}, which the server cannot "
                    "carry; export the model with standard tensor types"
                )
            out.append(TensorMetadata(name=t.name, datatype=datatype, shape=_dims(t.shape)))
        return out

    inputs, outputs = tensors(session.get_inputs()), tensors(session.get_outputs())
    batchable = all(t.shape and t.shape[0] == -1 for t in inputs + outputs)
    raw = session.get_modelmeta().custom_metadata_map.get(model_card.METADATA_KEY)
    card = model_card.parse(raw, str(source.path)) if raw else None
    return ServedModel(
        name=source.name,
        path=source.path,
        folder=source.folder,
        session=session,
        inputs=inputs,
        outputs=outputs,
        card=card,
        batchable=batchable,
        deploy_batch_size=source.deploy_batch_size,
    )
