"""Everything a text-generation training run loads and checks before its first step: the typed
training recipe and ``--train-kwargs``, the causal LM (Hugging Face folder or GGUF), the
teacher, the token windows and the ``CausalLMTask`` over them.

Every problem is one ``InputError`` line naming the flag, before any training. The settings are
the training pathways' own (``recipes``, ``training.config``), read the text-generation way:
``max_length`` is the window length (default 256), ``--train-samples`` / ``max_train_samples``
the number of training windows (0: all), ``--val-samples`` / ``max_val_samples`` the held-out
windows perplexity is measured on (default 64)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..context import RunContext
from ..errors import InputError
from ..spec import ExperimentType
from ..training.config import TrainConfig, parse_train_kwargs
from ..training.loading import ModelChoice, given_model
from ..training.setup import limit_samples
from .model_loading import Baseline, load_model, load_tokenizer, prepare_baseline
from .text_data import TextWindows, load_windows
from .training_task import CausalLMTask, causal_lm_task

DEFAULT_SEQUENCE_LENGTH = 256
DEFAULT_EVAL_WINDOWS = 64
ALL_WINDOWS = 1 << 30


@dataclass
class LlmTrainingSetup:
    recipe: Any
    """The pathway's typed recipe (``TrainingAwareRecipe`` / ``SparseTransferRecipe``)."""
    cfg: TrainConfig
    task: CausalLMTask
    windows: TextWindows
    baseline: Baseline
    """The input model as a safetensors folder (a GGUF file dequantized into the scratch folder)."""
    tokenizer: Any
    student: Any
    """The model to fine-tune (float32, loaded from ``baseline.folder``)."""
    teacher: Any | None
    """The --teacher model; None without one."""
    choice: ModelChoice


def load_llm_setup(
    ctx: RunContext, pathway: ExperimentType, scratch: Path, choose_model=given_model
) -> LlmTrainingSetup:
    """Recipe and train-kwargs first (cheap checks), then the models, then the data."""
    from ..data.hf_datasets import split_data_kwargs
    from ..recipes import load_recipe

    exp = ctx.experiment
    if exp.eval_metric != "auto":
        raise InputError(
            f"--eval-metric '{exp.eval_metric}' is not measured for text-generation, which reports held-out "
            "perplexity; leave --eval-metric at auto"
        )
    recipe = load_recipe(exp, ctx.recipe_path)
    if recipe.qat is True:
        raise InputError(
            "recipe 'qat: true' is not available for text-generation: QAT simulates onnxruntime's static "
            "INT8, and a causal LM is quantized by the one-shot choice (llm-compressor) after training; "
            "leave qat at auto"
        )
    options, train_kwargs = split_data_kwargs(exp.train_kwargs)
    if options:
        raise InputError(
            f"train-kwargs {sorted(options)} select columns/splits of a Hugging Face dataset; "
            "text-generation reads train/val text files (docs/llm.md), drop them"
        )
    cfg = limit_samples(exp, parse_train_kwargs(train_kwargs))
    if cfg.max_val_samples == 1:
        raise InputError(
            "--val-samples must be at least 2 for text-generation (the interval resamples windows)"
        )
    choice = choose_model(ctx)
    if choice.path is None:
        raise InputError(
            f"{pathway.value} --use-case text-generation needs --model: a Hugging Face causal-LM folder or "
            "a .gguf file"
        )
    baseline = prepare_baseline(choice.path, scratch / "input")
    if exp.structure == "channels" and pathway is ExperimentType.training_aware:
        from .structured import check_layout

        check_layout(baseline.folder)
    tokenizer = load_tokenizer(baseline.folder)
    windows = load_windows(
        ctx.data_path,
        tokenizer,
        sequence_length=cfg.max_length or DEFAULT_SEQUENCE_LENGTH,
        calibration_samples=cfg.max_train_samples or ALL_WINDOWS,
        eval_samples=cfg.max_val_samples or DEFAULT_EVAL_WINDOWS,
    )
    if windows.held_out.shape[0] < 2:
        raise InputError(
            f"--data '{exp.data}' gives {windows.held_out.shape[0]} held-out window(s) of "
            f"{windows.sequence_length} tokens; perplexity needs at least 2: pass more held-out text or a "
            "smaller max_length in --train-kwargs"
        )
    n_train = int(windows.calibration.shape[0])
    cfg.max_length = windows.sequence_length
    cfg = cfg.resolved(kind="text", train_count=n_train)
    student = load_model(baseline.folder)
    teacher = _teacher(ctx, scratch, student)
    task = causal_lm_task(windows.calibration, windows.held_out, sources=windows.sources)
    return LlmTrainingSetup(recipe, cfg, task, windows, baseline, tokenizer, student, teacher, choice)


def _teacher(ctx: RunContext, scratch: Path, student: Any) -> Any | None:
    """--teacher: a causal LM over the same vocabulary (its next-token distribution is compared)."""
    if ctx.teacher_path is None:
        return None
    folder = prepare_baseline(ctx.teacher_path, scratch / "teacher").folder
    teacher = load_model(folder)
    mine, theirs = student.get_output_embeddings().out_features, teacher.get_output_embeddings().out_features
    if mine != theirs:
        raise InputError(
            f"--teacher '{ctx.experiment.teacher}' predicts {theirs} tokens and the model {mine}; "
            "distillation needs a teacher with the same tokenizer"
        )
    return teacher
