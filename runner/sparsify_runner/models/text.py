"""Hugging Face model folders (config + tokenizer + weights) for sequence classification,
loaded offline (``local_files_only``). A ``.tar`` of such a folder is accepted too (that is
how runs publish text models, since outputs are flat files)."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from ..errors import InputError
from . import LoadedModel


def unpack_if_tar(path: Path) -> Path:
    if path.is_file() and (path.name.endswith(".tar") or path.name.endswith(".tar.gz")):
        target = Path(tempfile.mkdtemp(prefix="sparsify-hf-"))
        try:
            with tarfile.open(path) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise InputError(f"model '{path}' is not a readable tar archive: {err}") from None
        subdirs = [p for p in target.iterdir() if p.is_dir()]
        return subdirs[0] if not (target / "config.json").exists() and len(subdirs) == 1 else target
    return path


def load_text_model(path: Path, classes: list[str]) -> LoadedModel:
    import logging

    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = unpack_if_tar(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(
            f"model '{path}' is not a Hugging Face model folder (config.json, tokenizer files, weights); "
            "text classification expects one"
        )
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"model '{path}': config.json is not usable ({str(err).splitlines()[0][:160]})"
        ) from None
    n = len(classes)
    had_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    replaced = not had_head or config.num_labels != n
    config.num_labels = n
    config.id2label = {i: c for i, c in enumerate(classes)}
    config.label2id = {c: i for i, c in enumerate(classes)}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" warnings: we report it ourselves
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        shapes = getattr(config, "sparsify_shapes", None)
        if shapes:  # a structurally pruned result: rebuild, resize, then load the weights
            model = _load_pruned(path, config, shapes)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), config=config, local_files_only=True, ignore_mismatched_sizes=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise InputError(f"model '{path}' cannot be loaded: {str(err).splitlines()[0][:200]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    notes = (
        ["a new classification head was attached (the checkpoint's did not match the labels)"]
        if replaced
        else []
    )
    arch = (config.architectures or [type(model).__name__])[0]
    return LoadedModel(
        model,
        "text",
        arch,
        n,
        head_replaced=replaced,
        tokenizer=tokenizer,
        notes=notes,
        structured=bool(getattr(config, "sparsify_shapes", None)),
    )


def _load_pruned(path: Path, config, shapes: dict):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from ..training.shapes import restore_shapes

    weights = path / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"model '{path}' is structurally pruned but has no model.safetensors")
    state = load_file(str(weights))
    model = AutoModelForSequenceClassification.from_config(config)
    restore_shapes(model, state, shapes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if not k.endswith("position_ids")] or unexpected:
        raise InputError(
            f"model '{path}': weights do not match its recorded layer sizes "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    return model
