"""PyTorch -> ONNX (batch dimension dynamic), and the PyTorch artifacts a run publishes
(``model.pt`` for torchvision models and detectors, ``model-hf.tar`` for Hugging Face ones) so a result
can seed a sparse-transfer run or a catalog entry."""

from __future__ import annotations

import copy
import io
import tarfile
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .shapes import size_attributes
from .task import Task

OPSET = 17


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, args, strict=True))).logits


def export_onnx(task: Task, model: nn.Module, path: Path) -> Path:
    model = copy.deepcopy(model).float().cpu().eval()
    if task.kind == "text" and hasattr(model, "config"):
        model.config._attn_implementation = "eager"  # sdpa exports -inf masks
    example = task.example_inputs(1)
    names = list(example)
    module = model if task.kind in ("image", "detection") else _LogitsOnly(model, names)
    # a detector exports its dense pre-NMS (boxes, scores); NMS runs in detection.postprocess
    outputs = ["boxes", "scores"] if task.kind == "detection" else ["logits"]
    axes = {n: {0: "batch"} for n in [*names, *outputs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def save_torch_artifact(
    task: Task, model: nn.Module, arch: str, tokenizer, out_dir: Path, structured: bool
) -> Path:
    """model.pt (checkpoint dict: state_dict, arch_key, classes, image size, layer sizes when
    structurally pruned) or model-hf.tar (a Hugging Face folder) in ``out_dir``."""
    model = copy.deepcopy(model).float().cpu().eval()
    if task.kind in ("image", "detection"):
        path = out_dir / "model.pt"
        payload = {
            "state_dict": model.state_dict(),
            "arch_key": arch,
            "classes": task.classes,
            "image_size": int(task.settings.get("image_size", 224)),
        }
        if structured:
            payload["shapes"] = size_attributes(model)
        torch.save(payload, path)
        return path
    path = out_dir / "model-hf.tar"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        if structured:
            model.config.update({"sparsify_shapes": size_attributes(model)})
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(folder), arcname="model")
        path.write_bytes(buf.getvalue())
    return path
