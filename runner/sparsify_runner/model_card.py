"""What a served model needs to know about its inputs, stored inside the ONNX file.

The training pathways resize/normalize images and tokenize text in a specific way and
name the classes; a server that gets a raw image or a sentence must do exactly the same.
``ServingInfo`` records it as JSON in the model's ``metadata_props`` under
``sparsify.serving``, so the card travels with ``model.onnx`` wherever it is copied (a
text model's tokenizer is published beside it in ``tokenizer/``). Torch-free: ``onnx``
is imported only by the functions that read or write files.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from .errors import InputError

METADATA_KEY = "sparsify.serving"
TOKENIZER_DIR = "tokenizer"


class ImagePreprocessing(BaseModel):
    """PIL image -> convert(channel_order) -> resize((width, height), bilinear) -> /255 ->
    (x - mean) / std -> CHW float32 (torchvision's ToTensor + Normalize)."""

    height: int = Field(ge=1)
    width: int = Field(ge=1)
    resize: Literal["bilinear"] = "bilinear"
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)


class TextPreprocessing(BaseModel):
    """Hugging Face tokenizer (saved in ``tokenizer``, relative to model.onnx), truncation on,
    padded to ``max_length``; only the model's own inputs are fed."""

    max_length: int = Field(ge=1)
    padding: Literal["max_length"] = "max_length"
    tokenizer: str = TOKENIZER_DIR


class ServingInfo(BaseModel):
    schema_version: Literal["1"] = "1"
    use_case: str
    inputs: list[str] = Field(description="the model's input names, in order")
    output: str = Field("logits", description="the output holding one score per class")
    output_kind: Literal["logits"] = "logits"
    classes: list[str] = Field(description="class names, index = position in the output")
    image: ImagePreprocessing | None = None
    text: TextPreprocessing | None = None


def for_image(
    use_case: str, classes: list[str], size: int, mean, std, input_name: str = "input"
) -> ServingInfo:
    return ServingInfo(
        use_case=use_case,
        inputs=[input_name],
        classes=list(classes),
        image=ImagePreprocessing(height=size, width=size, mean=list(mean), std=list(std)),
    )


def for_text(use_case: str, classes: list[str], input_names: list[str], max_length: int) -> ServingInfo:
    return ServingInfo(
        use_case=use_case,
        inputs=list(input_names),
        classes=list(classes),
        text=TextPreprocessing(max_length=max_length),
    )


def parse(text: str, where: str) -> ServingInfo:
    """The JSON stored under ``sparsify.serving``; InputError (one line) when it is unusable."""
    try:
        return ServingInfo.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "card"
        raise InputError(
            f"model '{where}': its '{METADATA_KEY}' metadata is not valid ({loc}: {first['msg']}); "
            "re-run the pathway that produced it, or serve it without --task"
        ) from None


def _load_header(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise InputError(f"model '{path}' is not an ONNX file ({type(err).__name__})") from None


def read(path: Path | str) -> ServingInfo | None:
    """The card of an ONNX file, or None when it has none."""
    model = _load_header(Path(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return parse(prop.value, str(path))
    return None


def write(path: Path | str, info: ServingInfo | None) -> None:
    """Set (or, with None, remove) the card in place; the file is replaced atomically.
    External-data files (models over 2 GB) stay untouched: only the graph file changes."""
    import onnx

    path = Path(path)
    model = _load_header(path)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    if info is not None:
        model.metadata_props.add(key=METADATA_KEY, value=info.model_dump_json())
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def carry_over(source: Path | str, target: Path | str) -> bool:
    """Copy the card of ``source`` (the user's input model) onto ``target`` (the optimized
    model) when ``source`` has one; True if it did. One-shot keeps inputs and outputs as they
    were, so the preprocessing and class names still hold."""
    info = read(source)
    if info is None:
        return False
    write(target, info)
    return True
