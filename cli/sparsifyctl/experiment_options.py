"""The experiment flags shared by ``sparsifyctl run`` and ``sparsifyctl generate``.

Both commands take exactly the same flags (the original ``sparsify.run`` ones); this module
defines them once and turns them into a validated ``Experiment``. Every flag is optional at
the CLI level so that pydantic reports a missing or bad value as one line naming the field.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

import typer
from sparsify_runner.errors import InputError
from sparsify_runner.spec import Experiment, ExperimentType, validation_line

_O = typer.Option

# flag parameter name -> (annotation, typer option)
EXPERIMENT_PARAMS: dict[str, Any] = {
    "use_case": (str | None, _O(
        None, "--use-case", help="image-classification, text-classification, ... or custom."
    )),
    "model": (str | None, _O(None, "--model", help="Model path/URI (ONNX for one-shot).")),
    "arch": (str | None, _O(
        None, "--arch", help="torchvision architecture when --model is a bare state dict."
    )),
    "data": (str | None, _O(None, "--data", help="Dataset folder or URI.")),
    "optim_level": (float, _O(
        0.5, "--optim-level", help="0..1 trade-off: accuracy budget (1 point at 0.5) and search space; "
        "0 baseline, <0.3 INT8 only, >=0.3 INT8 + pruning (50 means 0.5)."
    )),
    "objective": (str, _O(
        "speed", "--objective", help="speed (fastest within the budget) or size (smallest, not slower)."
    )),
    "max_accuracy_drop": (float | None, _O(
        None, "--max-accuracy-drop", help="Budget vs the baseline (0.01 = 1 point); overrides the level's."
    )),
    "teacher": (str | None, _O(None, "--teacher", help="Distillation teacher (default: the dense model).")),
    "recipe": (str | None, _O(None, "--recipe", help="Recipe YAML overriding the optim-level recipe.")),
    "recipe_args": (str | None, _O(None, "--recipe-args", help="JSON object of recipe overrides.")),
    "train_kwargs": (str | None, _O(None, "--train-kwargs", help='JSON object, e.g. \'{"epochs": 3}\'.')),
    "eval_metric": (str, _O(
        "auto", "--eval-metric", help="auto, accuracy, f1, recall, mAP, mAP50 (object-detection), fidelity."
    )),
    "train_samples": (int | None, _O(
        None, "--train-samples", help="At most this many training (one-shot: calibration) samples."
    )),
    "val_samples": (int | None, _O(
        None, "--val-samples", help="At most this many validation (one-shot: held-out) samples."
    )),
    "structure": (str, _O(
        "unstructured", "--structure", help="unstructured or channels (structured, faster)."
    )),
    "pruning_method": (str, _O("obs", "--pruning-method", help="one-shot pruning: obs or magnitude.")),
    "catalog": (str | None, _O(None, "--catalog", help="Sparse-transfer base-model catalog URI.")),
    "deploy_device": (str, _O("cpu", "--deploy-device", help="Target device: cpu or cuda.")),
    "deploy_batch_size": (int, _O(1, "--deploy-batch-size", help="Target batch size for the benchmark.")),
    "quant_format": (str, _O("auto", "--quant-format", help="INT8 format: auto, qdq or qoperator.")),
    "output": (str | None, _O(
        None, "--output", "-o", help="Output folder or s3:// prefix (default: the current folder)."
    )),
    "working_dir": (str | None, _O(
        None, "--working-dir", help="Write to DIR/<name> (the original's working dir); not with --output."
    )),
    "name": (str | None, _O(None, "--name", help="Experiment name.")),
    "seed": (int, _O(0, "--seed", help="Random seed.")),
}


def _json_flag(flag: str, value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{flag} is not valid JSON ({err.msg}); pass an object like '{{\"epochs\": 3}}'"
        ) from None
    if not isinstance(parsed, dict):
        raise InputError(f"{flag} must be a JSON object like '{{\"epochs\": 3}}'")
    return parsed


def _output(
    output: str | None, working_dir: str | None, name: str | None, experiment_type: str
) -> str | None:
    """--working-dir DIR -> DIR/<name> (or DIR/<type>-<UTC time> without --name)."""
    if working_dir is None:
        return output
    if output is not None:
        raise InputError(
            "--output and --working-dir both given; pass one (--working-dir DIR writes to DIR/<name>)"
        )
    if not working_dir.strip():
        raise InputError("--working-dir is empty; pass a folder or an s3:// prefix")
    leaf = name or f"{experiment_type}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    if "/" in leaf or leaf in (".", ".."):
        raise InputError(f"--name '{leaf}' cannot be a folder name under --working-dir; drop the '/'")
    return f"{working_dir.rstrip('/')}/{leaf}"


def _flag_names() -> dict[str, str]:
    """Experiment field path -> the flag a user typed for it (``optim_level`` -> ``--optim-level``)."""
    names = {name: option.param_decls[0] for name, (_, option) in EXPERIMENT_PARAMS.items()}
    names.update(
        {
            "deploy.device": names.pop("deploy_device"),
            "deploy.batch_size": names.pop("deploy_batch_size"),
            "deploy.quant_format": names.pop("quant_format"),
        }
    )
    return names


def _validate(data: dict[str, Any]) -> Experiment:
    """The experiment, or InputError with one line that names the flag (not the field)."""
    from pydantic import ValidationError

    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        flag = _flag_names().get(loc)
        msg = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a rule across fields: its message already names the flags
            raise InputError(msg) from None
        if flag is None:
            raise InputError(validation_line(err)) from None
        given = first.get("input")
        shown = f" {given!r}" if isinstance(given, str | int | float) and not isinstance(given, bool) else ""
        raise InputError(f"{flag}{shown}: {msg}") from None


def build_experiment(experiment_type: str, **flags: Any) -> Experiment:
    """Flags -> validated Experiment, or InputError with one line."""
    valid = [t.value for t in ExperimentType]
    if experiment_type not in valid:
        raise InputError(f"unknown experiment type '{experiment_type}'; use one of {', '.join(valid)}")
    data: dict[str, Any] = {
        "type": experiment_type,
        "use_case": flags["use_case"],
        "model": flags["model"],
        "arch": flags["arch"],
        "data": flags["data"],
        "optim_level": flags["optim_level"],
        "objective": flags.get("objective", "speed"),
        "max_accuracy_drop": flags.get("max_accuracy_drop"),
        "teacher": flags["teacher"],
        "recipe": flags["recipe"],
        "recipe_args": _json_flag("--recipe-args", flags["recipe_args"]),
        "train_kwargs": _json_flag("--train-kwargs", flags["train_kwargs"]),
        "eval_metric": flags["eval_metric"],
        "structure": flags["structure"],
        "pruning_method": flags["pruning_method"],
        "catalog": flags["catalog"],
        "deploy": {
            "device": flags["deploy_device"],
            "batch_size": flags["deploy_batch_size"],
            "quant_format": flags["quant_format"],
        },
        "train_samples": flags.get("train_samples"),
        "val_samples": flags.get("val_samples"),
        "output": _output(flags["output"], flags.get("working_dir"), flags["name"], experiment_type),
        "name": flags["name"],
        "seed": flags["seed"],
    }
    if data["use_case"] is None:
        raise InputError("missing --use-case; pass e.g. --use-case image-classification")
    if data["data"] is None:
        raise InputError("missing --data; pass the dataset folder or URI")
    return _validate({k: v for k, v in data.items() if v is not None})


def with_experiment_options(
    func: Callable[..., Any] | None = None, *, help_for: dict[str, str] | None = None
) -> Any:
    """Decorate a typer command whose signature has ``experiment_type: str`` and
    ``flags: dict``: the shared experiment flags are added to its CLI signature and
    collected into ``flags`` (call ``build_experiment(experiment_type, **flags)``).

    ``help_for`` (``@with_experiment_options(help_for={"output": ...})``) replaces the help
    text of some flags for this command only (``generate``'s inputs and output must be
    object-storage URIs, so ``run``'s "default: the current folder" would be wrong there)."""
    if func is None:
        return functools.partial(with_experiment_options, help_for=help_for)
    sig = inspect.signature(func)
    own = [p for name, p in sig.parameters.items() if name != "flags"]
    shared = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=_with_help(option, (help_for or {}).get(name)),
            annotation=annotation,
        )
        for name, (annotation, option) in EXPERIMENT_PARAMS.items()
    ]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name in EXPERIMENT_PARAMS}
        return func(flags=flags, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + shared)  # type: ignore[attr-defined]
    return wrapper


def _with_help(option: Any, text: str | None) -> Any:
    """The shared option, or a copy of it with another help text (the shared one is unchanged)."""
    if text is None:
        return option
    other = copy.copy(option)
    other.help = text
    return other
