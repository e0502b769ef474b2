"""``--task``: what a person has (an image file, a sentence) -> the model's tensors -> named
classes, with the preprocessing and class names the training pathway stored in the model
(``model_card``). Torch-free: images go through PIL exactly as torchvision's Resize +
ToTensor + Normalize do on PIL images; text through the tokenizer published beside it."""

from __future__ import annotations

import io

import numpy as np

from ..errors import InputError
from ..model_card import METADATA_KEY, ServingInfo
from ..spec import UseCase, normalize_use_case
from .model import ServedModel
from .protocol import ProtocolError

SUPPORTED = (UseCase.image_classification, UseCase.text_classification)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class ClassifierTask:
    """Shared by both use cases: logits -> the top classes with their names."""

    use_case = ""

    def __init__(self, model: ServedModel, card: ServingInfo) -> None:
        self.model, self.card = model, card
        outputs = [o.name for o in model.outputs]
        self.output = card.output if card.output in outputs else outputs[0]
        width = next(o.shape[-1] for o in model.outputs if o.name == self.output)
        if width not in (-1, len(card.classes)):
            raise InputError(
                f"model '{model.path}': its card names {len(card.classes)} classes but output "
                f"'{self.output}' has {width} scores; the card does not belong to this model"
            )

    def labels(self, outputs: dict[str, np.ndarray], top_k: int) -> list[list[dict]]:
        logits = np.asarray(outputs[self.output], dtype=np.float32)
        logits = logits.reshape(logits.shape[0], -1)
        probs = softmax(logits)
        k = max(1, min(top_k, probs.shape[1]))
        result = []
        for row in probs:
            top = np.argsort(-row, kind="stable")[:k]
            result.append(
                [
                    {
                        "index": int(i),
                        "label": self.card.classes[i] if i < len(self.card.classes) else str(int(i)),
                        "score": round(float(row[i]), 6),
                    }
                    for i in top
                ]
            )
        return result


class ImageClassification(ClassifierTask):
    use_case = UseCase.image_classification

    def __init__(self, model: ServedModel, card: ServingInfo) -> None:
        super().__init__(model, card)
        if card.image is None:
            raise InputError(f"model '{model.path}': its serving card has no image preprocessing")
        self.input = card.inputs[0] if card.inputs else model.inputs[0].name
        self.mean = np.asarray(card.image.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(card.image.std, dtype=np.float32).reshape(3, 1, 1)

    def preprocess(self, images: list[bytes]) -> dict[str, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        spec = self.card.image
        batch = []
        for n, raw in enumerate(images):
            try:
                with Image.open(io.BytesIO(raw)) as img:
                    img = img.convert(spec.channel_order).resize((spec.width, spec.height), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32)
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise ProtocolError(
                    400, f"file {n + 1} is not a readable image ({type(err).__name__})"
                ) from None
            chw = arr.transpose(2, 0, 1) * np.float32(spec.scale)
            batch.append((chw - self.mean) / self.std)
        return {self.input: np.stack(batch).astype(np.float32)}


class TextClassification(ClassifierTask):
    use_case = UseCase.text_classification

    def __init__(self, model: ServedModel, card: ServingInfo) -> None:
        super().__init__(model, card)
        if card.text is None:
            raise InputError(f"model '{model.path}': its serving card has no text preprocessing")
        folder = model.folder / card.text.tokenizer
        if not folder.is_dir():
            raise InputError(
                f"model '{model.path}' needs its tokenizer in '{folder}' (published beside model.onnx by "
                "the run); copy the run's whole output folder and serve the folder"
            )
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise InputError(
                "--task text-classification needs the 'transformers' package "
                "(pip install 'sparsify-k8s[runner]')"
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(
                f"tokenizer '{folder}' cannot be loaded: {str(err).splitlines()[0][:160]}"
            ) from None
        self.names = [t.name for t in model.inputs]

    def preprocess(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            padding="max_length",
            max_length=self.card.text.max_length,
            return_tensors="np",
        )
        feeds = {}
        for spec in self.model.inputs:
            if spec.name not in enc:
                raise InputError(
                    f"the tokenizer produces no '{spec.name}', which model '{self.model.name}' needs"
                )
            feeds[spec.name] = enc[spec.name].astype(np.int64 if spec.datatype == "INT64" else np.int32)
        return feeds


def make_task(use_case: str, model: ServedModel) -> ClassifierTask:
    """The handler for ``--task``; InputError (one line) when the model cannot do it."""
    canonical = normalize_use_case(use_case)
    if canonical == UseCase.object_detection:
        raise InputError(
            "--task object-detection: serving a detector with --task is not built yet in this project; serve "
            "the model without --task, post tensors to /v2/models/NAME/infer and run NMS on boxes/scores"
        )
    if canonical not in SUPPORTED:
        raise InputError(
            f"--task '{use_case}' is not supported; use one of {', '.join(SUPPORTED)} (or no --task)"
        )
    card = model.card
    if card is None:
        raise InputError(
            f"model '{model.path}' has no '{METADATA_KEY}' metadata (preprocessing and class names); it is "
            "written by the training-aware and sparse-transfer pathways: serve one of their outputs, "
            "or drop --task"
        )
    if normalize_use_case(card.use_case) != canonical:
        raise InputError(
            f"--task {canonical}: model '{model.path}' was trained for {card.use_case}; "
            f"use --task {card.use_case}"
        )
    task = ImageClassification if canonical == UseCase.image_classification else TextClassification
    return task(model, card)
