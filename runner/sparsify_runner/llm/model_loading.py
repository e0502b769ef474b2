"""The dense causal LM every candidate starts from: a Hugging Face folder or a GGUF file.

A folder must hold ``config.json`` naming a causal-LM architecture, safetensors weights and a
tokenizer; pickled weights (``pytorch_model.bin``, ``.pt``) are refused, never loaded. A GGUF
file is read and dequantized to float32 by transformers (with the ``gguf`` package), its
quantizer settings dropped (``save_pretrained`` and llm-compressor refuse a model that still
says it is GGUF-quantized), its end-of-sequence token checked against the file's, and saved as
a safetensors folder in the run's work folder: llm-compressor reads the model's config from
disk. Every problem is one InputError line naming ``--model``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
GGUF_MAGIC = b"GGUF"
SHIPPED_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken", ".py")
"""Files of an input folder that the unchanged baseline ships with (weights, config, tokenizer)."""


@dataclass
class Baseline:
    folder: Path
    """A safetensors folder (the input folder itself, or the dequantized GGUF)."""
    source: Literal["hf-folder", "gguf"]
    architecture: str
    notes: list[str] = field(default_factory=list)


def load_model(folder: Path) -> Any:
    """The float32 model of a prepared folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def prepare_baseline(path: Path, work_dir: Path) -> Baseline:
    """Validate ``--model`` and return the folder the run works from."""
    if path.is_dir():
        return _folder(path)
    if not path.is_file():
        raise InputError(
            f"--model '{path}' does not exist; pass a Hugging Face causal-LM folder or a .gguf file"
        )
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return _gguf(path, work_dir / "dense")
    if suffix in PICKLE_SUFFIXES:
        raise InputError(
            f"--model '{path}' is a pickled checkpoint, which is never loaded (unpickling can run "
            "code); save "
            "the model with save_pretrained (safetensors) and pass its folder"
        )
    if suffix == ".safetensors":
        raise InputError(
            f"--model '{path}' is a bare weights file; pass the folder holding it with config.json"
        )
    raise InputError(
        f"--model '{path}' is not a model text-generation reads; pass a Hugging Face causal-LM folder "
        "(config.json + safetensors) or a .gguf file"
    )


def _folder(path: Path) -> Baseline:
    if not (path / "config.json").is_file():
        raise InputError(
            f"--model '{path}' has no config.json, so it is not a Hugging Face model folder; pass "
            "a causal-LM "
            "folder (config.json + safetensors + tokenizer) or a .gguf file"
        )
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        what = f"only pickled weights ({', '.join(pickles)})" if pickles else "no safetensors weights"
        raise InputError(
            f"--model '{path}' holds {what}; pickles are never loaded (they can run code): re-save the model "
            "with save_pretrained(safe_serialization=True)"
        )
    architecture = _check_causal(path)
    try:
        load_tokenizer(path)
    except Exception as err:  # transformers raises many kinds for a missing/broken tokenizer
        raise InputError(
            f"--model '{path}' has no usable tokenizer ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); "
            "save the tokenizer into the folder with tokenizer.save_pretrained"
        ) from None
    return Baseline(path, "hf-folder", architecture)


def _check_causal(path: Path) -> str:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:
        raise InputError(
            f"--model '{path}': config.json is not a configuration transformers can read "
            f"({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]})"
        ) from None
    architectures = list(getattr(config, "architectures", None) or [])
    causal = [a for a in architectures if a.endswith(CAUSAL_SUFFIXES)]
    if architectures and not causal:
        raise InputError(
            f"--model '{path}' is a {architectures[0]}, not a causal language model; text-generation needs a "
            "*ForCausalLM model (Llama, Qwen2, Mistral, Phi, GPT-2, ...)"
        )
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise InputError(
            f"--model '{path}' has model type '{config.model_type}', which transformers has no "
            "causal-LM class for"
        )
    return causal[0] if causal else MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__


def _gguf(path: Path, out: Path) -> Baseline:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise InputError(f"--model '{path}' is not a GGUF file (no GGUF header); pass a valid .gguf file")
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ImportError as err:
        raise InputError(
            f"--model '{path}': reading GGUF needs the gguf package ({err}); install sparsify-k8s[llm]"
        ) from None
    except Exception as err:  # unsupported architecture, truncated file, ...
        raise InputError(
            f"--model '{path}' is a GGUF file transformers cannot read or dequantize ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); convert it to a Hugging Face folder first"
        ) from None
    notes = []
    quant = getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None  # a dequantized float model from here on
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    fixed = _fix_eos(tokenizer, model.config.eos_token_id)
    if fixed:
        notes.append(fixed)
    notes.append(
        f"the model came from GGUF '{path.name}' ({_gguf_type(quant, name)}), dequantized to float32: its "
        "weights already carry that format's rounding, so the dense baseline is the GGUF model, not the "
        "original float one"
    )
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Baseline(out, "gguf", type(model).__name__, notes)


def _gguf_type(quant: Any, name: str) -> str:
    for part in reversed(Path(name).stem.split(".")):
        if part[:1] in "QFqf" and any(ch.isdigit() for ch in part):
            return part
    return str(getattr(quant, "quant_method", "GGUF"))


def _fix_eos(tokenizer: Any, eos_id: Any) -> str | None:
    """The GGUF tokenizer conversion of some transformers releases names a different end-of-sequence
    token than the file (SmolLM2: ``<|im_start|>`` where the file says id 2, ``<|im_end|>``)."""
    if not isinstance(eos_id, int) or tokenizer.eos_token_id == eos_id:
        return None
    before = tokenizer.eos_token
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    return (
        f"end-of-sequence token set to {tokenizer.eos_token!r} (id {eos_id}, as the GGUF file says), "
        f"not {before!r}"
    )


def ship_baseline(baseline: Baseline, target: Path) -> None:
    """The unchanged model as the run's output folder: the input folder's weights, config and
    tokenizer files byte for byte (or the dequantized GGUF folder)."""
    target.mkdir(parents=True)
    for item in sorted(baseline.folder.iterdir()):
        if item.is_file() and item.suffix.lower() in SHIPPED_SUFFIXES:
            shutil.copy2(item, target / item.name)
