"""The experiment: what one run of the runner does.

Pure pydantic (no torch): the operator embeds this model in the ``SparsifyExperiment``
CRD, ``sparsifyctl run`` builds it from flags, ``sparsify-runner run --experiment`` reads
it from a file. Field names are snake_case in Python and camelCase on the wire (CRD,
JSON/YAML experiment files); both spellings are accepted on input.
"""

from __future__ import annotations

import json
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import InputError

URI_SCHEMES = ("file", "s3", "http", "https")


class ExperimentType(str, Enum):  # noqa: UP042 (plain str mixin keeps pydantic/CRD enums simple)
    one_shot = "one-shot"
    sparse_transfer = "sparse-transfer"
    training_aware = "training-aware"


class UseCase(StrEnum):
    """The use cases the product knows by name (``Experiment.use_case`` is a plain string,
    since one-shot also accepts ``custom:NAME``; compare it with these members)."""

    image_classification = "image-classification"
    text_classification = "text-classification"
    object_detection = "object-detection"
    text_generation = "text-generation"
    segmentation = "segmentation"
    question_answering = "question-answering"
    token_classification = "token-classification"
    masked_language_modeling = "masked-language-modeling"
    information_retrieval = "information-retrieval"
    multilabel_text_classification = "multilabel-text-classification"


# The original product's use-case registry: canonical name -> its aliases. Matching ignores
# case, '-', '_' and spaces, and a domain prefix ('cv-', 'nlp-'), as the original did.
# Sentiment analysis and document classification are single-label sequence classification,
# so they train as text-classification; the rest are accepted for one-shot on an ONNX model.
USE_CASE_ALIASES: dict[str, tuple[str, ...]] = {
    UseCase.image_classification: ("image_classification", "ic", "classification", "cv-classification"),
    UseCase.text_classification: (
        "text_classification",
        "nlp-text_classification",
        "nlp-text-classification",
        "sentiment-analysis",
        "sentiment_analysis",
        "sentiment",
        "nlp-sentiment_analysis",
        "document-classification",
        "document_classification",
        "nlp-document_classification",
        "glue",
    ),
    UseCase.object_detection: ("object_detection", "od", "detection", "cv-detection", "yolo"),
    UseCase.segmentation: ("seg", "image-segmentation", "image_segmentation", "cv-segmentation"),
    UseCase.question_answering: ("question_answering", "qa", "nlp-question_answering"),
    UseCase.token_classification: (
        "token_classification",
        "ner",
        "named-entity-recognition",
        "named_entity_recognition",
        "nlp-token_classification",
    ),
    UseCase.masked_language_modeling: (
        "masked_language_modeling",
        "mlm",
        "fill-mask",
        "nlp-masked_language_modeling",
    ),
    UseCase.information_retrieval: ("information_retrieval", "ir", "nlp-information_retrieval"),
    UseCase.multilabel_text_classification: (
        "multilabel_text_classification",
        "multi-label-text-classification",
        "nlp-multilabel_text_classification",
    ),
    # one-shot only, on a Hugging Face causal-LM folder or GGUF (llm/, docs/llm.md)
    UseCase.text_generation: ("text_generation", "nlg", "causal-lm", "nlp-text_generation", "llm"),
}
TEXT_GENERATION = UseCase.text_generation
TRAINING_USE_CASES = (
    UseCase.image_classification,
    UseCase.text_classification,
    UseCase.object_detection,
    UseCase.text_generation,
)
TRAINING_NOTE = (
    "image-classification, text-classification (also sentiment-analysis and document-classification), "
    "object-detection, text-generation"
)
DETECTION_METRICS = ("mAP", "mAP50")


def _use_case_key(value: str) -> str:
    key = "".join(ch for ch in value.strip().lower() if ch not in "-_ ")
    for prefix in ("cv", "nlp"):
        if key.startswith(prefix) and key[len(prefix) :] in _USE_CASE_KEYS:
            return key[len(prefix) :]
    return key


_USE_CASE_KEYS: dict[str, str] = {}
for _canonical, _aliases in USE_CASE_ALIASES.items():
    for _name in (_canonical, *_aliases):
        _USE_CASE_KEYS["".join(ch for ch in _name.lower() if ch not in "-_ ")] = str(_canonical)


CUSTOM_PREFIX = "custom:"


def _close_use_case(value: str) -> str | None:
    """The known use case a mistyped name is closest to (``imgae-classification`` ->
    ``image-classification``), or None when the name is not close to any."""
    import difflib

    key = _use_case_key(value)
    match = difflib.get_close_matches(key, list(_USE_CASE_KEYS), n=1, cutoff=0.85)
    return _USE_CASE_KEYS[match[0]] if match else None


def normalize_use_case(value: str) -> str:
    """Map the original's names and aliases to the canonical name (case, '-', '_', spaces
    and a 'cv-'/'nlp-' prefix ignored); unknown strings pass through (custom use cases)."""
    return _USE_CASE_KEYS.get(_use_case_key(value), value.strip().lower())


def uri_scheme(uri: str) -> str:
    """``s3://b/k`` -> ``s3``; plain paths and ``file://`` -> ``file``."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, use_enum_values=False
    )


class Objective(str, Enum):  # noqa: UP042 (as ExperimentType)
    """What an optim level buys within its accuracy budget: the fastest model, or the smallest."""

    speed = "speed"
    size = "size"


class DeployTarget(_Model):
    """Where the optimized model will run: the export format and the benchmark follow it."""

    runtime: Literal["onnxruntime"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = Field(1, ge=1, le=4096)
    # auto: QDQ for onnxruntime/TensorRT (the fastest here); qoperator: QLinear*/ConvInteger
    # operators for sparsity-aware CPU runtimes that ignore QDQ.
    quant_format: Literal["auto", "qdq", "qoperator"] = "auto"


class Experiment(_Model):
    """One sparsification experiment."""

    name: str | None = Field(None, description="Free-form name used in reports and metrics.")
    type: ExperimentType = Field(description="one-shot, sparse-transfer or training-aware.")
    use_case: str = Field(
        description="image-classification, text-classification (and aliases), object-detection, "
        "or any custom string for one-shot."
    )
    model: str | None = Field(
        None,
        description="Model URI (path, file://, s3://, http(s)://): ONNX for one-shot, a "
        "checkpoint/state dict or Hugging Face folder for training. Optional for sparse-transfer "
        "(then chosen from the catalog).",
    )
    arch: str | None = Field(
        None, description="torchvision architecture name when the model is a bare state dict."
    )
    data: str = Field(description="Dataset URI (a folder or an s3:// prefix).")
    optim_level: float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="0..1, the trade-off: sets the accuracy budget against the baseline (1 point at 0.5) "
        "and the search space (0 = baseline, <0.3 = INT8 only, >=0.3 = INT8 + pruning); an integer in "
        "(1, 100] is a percentage (50 -> 0.5), as the original accepted.",
    )
    objective: Objective = Field(
        Objective.speed,
        description="speed: ship the fastest candidate within the accuracy budget on the deployment "
        "target; size: the smallest (compressed) one, never slower than the baseline.",
    )
    max_accuracy_drop: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Accuracy budget for the whole result against the baseline (0.01 = 1 point of "
        "the headline metric); overrides the optim level's budget.",
    )
    teacher: str | None = Field(None, description="Distillation teacher URI (default: the dense model).")
    recipe: str | None = Field(None, description="Recipe YAML URI overriding the optim-level recipe.")
    recipe_args: dict[str, Any] = Field(default_factory=dict, description="Recipe variable overrides.")
    train_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Training overrides: epochs, batch_size, lr, ..."
    )
    eval_metric: Literal["auto", "accuracy", "f1", "recall", "mAP", "mAP50", "fidelity"] = Field(
        "auto",
        description="auto: accuracy when labels exist (mAP for object-detection), else fidelity to the "
        "baseline; f1 and recall are macro averages over classes; mAP (COCO mAP@0.5:0.95) and mAP50 "
        "(mAP@0.5) are for object-detection.",
    )
    train_samples: int | None = Field(
        None,
        ge=1,
        description="Use at most this many training samples (one-shot: calibration samples); "
        "a subset chosen by the seed.",
    )
    val_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate on at most this many validation samples (one-shot: held-out samples).",
    )
    structure: Literal["unstructured", "channels"] = Field(
        "unstructured",
        description="unstructured: weight sparsity (smaller, not faster on onnxruntime); "
        "channels: remove whole channels/heads/neurons (faster on any runtime).",
    )
    pruning_method: Literal["obs", "magnitude"] = Field(
        "obs", description="One-shot pruning: obs (SparseGPT-style, calibrated) or magnitude."
    )
    catalog: str | None = Field(None, description="Sparse-transfer base-model catalog URI.")
    deploy: DeployTarget = Field(default_factory=DeployTarget)
    output: str = Field(".", description="Output location (folder or s3:// prefix).")
    seed: int = 0

    @field_validator("optim_level", mode="before")
    @classmethod
    def _optim_level(cls, value: Any) -> Any:
        """[0, 1] as is; an integer in (1, 100] is a percentage, as the original read it."""
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value  # pydantic's own message for text that is not a number
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if 0.0 <= value <= 1.0:
            return float(value)
        if 1.0 < value <= 100.0 and float(value).is_integer():
            return float(value) / 100.0
        raise ValueError(
            f"must be in [0, 1] (or an integer percentage in (1, 100], e.g. 50 = 0.5), got {value}"
        )

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        """The sweep's words (speedup, compression) name the same objectives."""
        if isinstance(value, str):
            key = value.strip().lower()
            return {"speedup": "speed", "compression": "size"}.get(key, key)
        return value

    @field_validator("eval_metric", mode="before")
    @classmethod
    def _eval_metric(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        key = value.strip().lower().replace("@", "").replace("_", "").replace(".", "")
        return {"map": "mAP", "map5095": "mAP", "map50": "mAP50", "map05": "mAP50"}.get(
            key, value.strip().lower()
        )

    @field_validator("use_case")
    @classmethod
    def _use_case(cls, value: str) -> str:
        if value.strip().lower().startswith(CUSTOM_PREFIX):  # custom on purpose: no typo check
            name = value.strip()[len(CUSTOM_PREFIX) :].strip()
            if not name:
                raise ValueError(f"'{value}' names no use case; write e.g. {CUSTOM_PREFIX}my-sensor")
            return CUSTOM_PREFIX + name.lower()
        value = normalize_use_case(value)
        if not value:
            raise ValueError("use case is empty; pass e.g. image-classification")
        if value not in USE_CASE_ALIASES:
            close = _close_use_case(value)
            if close is not None:
                raise ValueError(
                    f"'{value}' is not a known use case: did you mean {close}? (a custom use case that "
                    f"is meant to look like this one is written {CUSTOM_PREFIX}{value})"
                )
        return value

    @field_validator("model", "data", "teacher", "recipe", "catalog", "output")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("is empty; pass a path or a URI (file://, s3://, http(s)://)")
        scheme = uri_scheme(value)
        if scheme not in URI_SCHEMES:
            raise ValueError(
                f"unknown storage scheme '{scheme}://' in '{value}'; use a path, file://, s3:// or https://"
            )
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Experiment:
        if self.type in (ExperimentType.one_shot, ExperimentType.training_aware) and not self.model:
            raise ValueError(f"{self.type.value} needs a model; pass --model")
        if self.type != ExperimentType.one_shot and self.use_case not in TRAINING_USE_CASES:
            raise ValueError(
                f"use case '{self.use_case}' is not supported for {self.type.value}; training supports "
                f"{TRAINING_NOTE}; other use cases work with one-shot on an ONNX model"
            )
        if self.eval_metric in DETECTION_METRICS and self.use_case != UseCase.object_detection:
            raise ValueError(
                f"eval metric '{self.eval_metric}' is for object-detection, not '{self.use_case}'; "
                "use accuracy, f1, recall or fidelity"
            )
        if self.use_case == UseCase.object_detection and self.eval_metric in ("accuracy", "f1", "recall"):
            raise ValueError(
                f"eval metric '{self.eval_metric}' is for classification; object-detection reports mAP "
                "(mAP@0.5:0.95), mAP50 or fidelity"
            )
        if uri_scheme(self.output).startswith("http"):
            raise ValueError("output cannot be http(s):// (read-only); use a folder or s3://")
        return self

    # ---- (de)serialization -------------------------------------------------------------
    @property
    def is_detection(self) -> bool:
        """An object detector: every output is kept (boxes and scores), accuracy is mAP and
        fidelity compares boxes. The one place the task kind is read from the use case."""
        return self.use_case == UseCase.object_detection

    def to_wire(self) -> dict[str, Any]:
        """camelCase JSON-compatible dict (the CRD/experiment-file form)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def validation_line(err: ValidationError) -> str:
    """A pydantic error as one line naming the experiment field (files and CRs name fields)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "experiment"
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"invalid experiment field '{loc}': {msg}{extra}"


def parse_experiment(data: dict[str, Any]) -> Experiment:
    """Validate a dict into an Experiment; raise InputError with one line naming the field."""
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise InputError(validation_line(err)) from None


def load_experiment(source: str) -> Experiment:
    """Read an experiment from a JSON/YAML file path or an inline JSON string."""
    text = source.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"--experiment is not valid JSON: {err.msg} at column {err.colno}") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(
                f"experiment file '{source}' does not exist; pass a JSON/YAML file or inline JSON"
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise InputError(f"experiment file '{source}' is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise InputError(
            f"experiment '{source}' must be a mapping of fields (type, useCase, model, data, ...)"
        )
    # Accept a whole SparsifyExperiment manifest too: use its spec.experiment.
    if "apiVersion" in data and isinstance(data.get("spec"), dict):
        data = data["spec"].get("experiment", data["spec"])
    return parse_experiment(data)
