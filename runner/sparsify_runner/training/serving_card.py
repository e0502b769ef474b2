"""What ``sparsifyctl serve --task`` needs to feed a trained model exactly as training did."""

from __future__ import annotations

from pathlib import Path

from ..context import RunContext
from .task import Task


def record_serving_info(ctx: RunContext, task: Task, model_path: Path, tokenizer) -> None:
    """Store the preprocessing and class names of training in model.onnx (``model_card``),
    and a text model's tokenizer in ``tokenizer/`` beside it, so ``sparsifyctl serve --task``
    turns an image or a sentence into exactly the tensors the model was trained on."""
    from .. import model_card

    use_case = ctx.experiment.use_case
    if task.kind == "detection":
        return  # the serving card describes classifier logits; detectors are not served yet
    if task.kind == "image":
        from ..data.imagefolder import IMAGENET_MEAN, IMAGENET_STD

        size = int(task.settings["image_size"])
        info = model_card.for_image(
            use_case, task.classes, size, IMAGENET_MEAN, IMAGENET_STD, input_name=task.input_names[0]
        )
    else:
        info = model_card.for_text(use_case, task.classes, task.input_names, int(task.settings["max_length"]))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(model_path.parent / model_card.TOKENIZER_DIR))
    model_card.write(model_path, info)
