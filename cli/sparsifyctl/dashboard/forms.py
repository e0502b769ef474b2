"""The "new experiment" form: the CLI's own flags, validator and manifest builder behind HTML inputs.

The field list, defaults and help texts come from ``experiment_options.EXPERIMENT_PARAMS``
and ``generate``'s signature, validation from ``build_manifest`` (which runs
``build_experiment``, i.e. the runner's pydantic ``Experiment``). The form only parses
text inputs into the types the CLI's parser would produce, and maps the one-line error
back to the field it names.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sparsify_runner.errors import InputError
from sparsify_runner.spec import USE_CASE_ALIASES, DeployTarget, Experiment, ExperimentType, uri_scheme

from .. import cli_cluster
from ..experiment_options import EXPERIMENT_PARAMS, build_experiment

# generate's placement flags offered by the form (the rest stay CLI-only)
PLACEMENT = ("gpus", "namespace", "secret", "endpoint", "region", "queue", "image", "cpu", "memory")
_LITERAL_SOURCES = {
    "eval_metric": Experiment.model_fields["eval_metric"].annotation,
    "structure": Experiment.model_fields["structure"].annotation,
    "pruning_method": Experiment.model_fields["pruning_method"].annotation,
    "deploy_device": DeployTarget.model_fields["device"].annotation,
    "quant_format": DeployTarget.model_fields["quant_format"].annotation,
}
# experiment field paths (snake_case) whose form field has another name
_PATH_TO_FIELD = {
    "type": "experiment_type",
    "deploy.device": "deploy_device",
    "deploy.batch_size": "deploy_batch_size",
    "deploy.quant_format": "quant_format",
    "deploy.runtime": "deploy_device",
}


@dataclass
class Field:
    name: str
    flag: str
    help: str
    default: Any
    kind: str  # text | number | select
    choices: tuple[str, ...] = ()
    group: str = "experiment"


def _option(name: str, info: Any, annotation: Any, group: str) -> Field:
    flag = next(d for d in info.param_decls if d.startswith("--"))
    base = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = "number" if base[0] in (int, float) else "text"
    choices: tuple[str, ...] = ()
    if name in _LITERAL_SOURCES:
        kind, choices = "select", tuple(typing.get_args(_LITERAL_SOURCES[name]))
    return Field(
        name=name,
        flag=flag,
        help=info.help or "",
        default=info.default,
        kind=kind,
        choices=choices,
        group=group,
    )


_GENERATE_HINTS = typing.get_type_hints(cli_cluster.generate_command)


def _fields() -> list[Field]:
    out = [
        Field(
            name="experiment_type",
            flag="",
            help="one-shot, sparse-transfer or training-aware",
            default="one-shot",
            kind="select",
            choices=tuple(t.value for t in ExperimentType),
        )
    ]
    out += [_option(n, opt, ann, "experiment") for n, (ann, opt) in EXPERIMENT_PARAMS.items()]
    params = inspect.signature(cli_cluster.generate_command).parameters
    out += [_option(n, params[n].default, _GENERATE_HINTS[n], "cluster") for n in PLACEMENT]
    return out


FIELDS = _fields()
BY_NAME = {f.name: f for f in FIELDS}
BY_FLAG = {f.flag: f for f in FIELDS if f.flag}
USE_CASES = tuple(USE_CASE_ALIASES)
_ANNOTATIONS = {n: ann for n, (ann, _opt) in EXPERIMENT_PARAMS.items()} | {
    n: _GENERATE_HINTS[n] for n in PLACEMENT
}


@dataclass
class FormResult:
    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    """field name -> one line ('_form' for an error that names no field): the experiment is invalid"""
    cluster_errors: dict[str, str] = field(default_factory=dict)
    """the experiment is valid (the run command stands) but not as a cluster manifest"""
    command: str | None = None
    generate_command: str | None = None
    manifest: dict[str, Any] | None = None
    manifest_yaml: str | None = None


def defaults() -> dict[str, str]:
    return {f.name: "" if f.default is None else _text(f.default) for f in FIELDS}


def _text(value: Any) -> str:
    return str(value)


# experiment fields that hold a path or URI (relative local paths are made absolute)
PATH_FIELDS = ("model", "data", "teacher", "recipe", "catalog", "output")


def _launch_folder(run_folder: Path, output: Any) -> Path | None:
    """The folder ``sparsifyctl run`` was started in: the run folder minus the relative
    ``--output`` it was given (``runs/a`` in ``/home/u/proj/runs/a`` -> ``/home/u/proj``;
    the default ``.`` -> the run folder itself). None when the output does not tell (an
    absolute or s3:// output, or a folder that was moved since)."""
    if not isinstance(output, str) or uri_scheme(output) != "file" or "://" in output:
        return None
    rel = Path(os.path.normpath(output))
    if rel.is_absolute() or ".." in rel.parts:
        return None
    parts = () if str(rel) == "." else rel.parts
    folder = Path(os.path.abspath(run_folder))
    if not parts:
        return folder
    if len(folder.parts) <= len(parts) or folder.parts[-len(parts) :] != parts:
        return None
    return Path(*folder.parts[: -len(parts)])


def _absolute(value: str, bases: list[Path]) -> str:
    """A relative local path made absolute against the first base where it exists (else the
    first base); URIs, absolute paths and names (``resnet50``, ``imagenette``) are kept."""
    if "://" in value or uri_scheme(value) != "file" or Path(value).expanduser().is_absolute():
        return value
    from sparsify_runner.named import is_name

    for base in bases:
        candidate = base / value
        if candidate.exists():
            return os.path.normpath(candidate)
    if is_name(value):
        return value
    return os.path.normpath(bases[0] / value)


def values_from_experiment(wire: dict[str, Any], run_folder: Path | None = None) -> dict[str, str]:
    """A run's experiment (report.json / CR wire form) as form values: "new experiment like this".

    ``run_folder`` (a local run): relative paths were relative to where ``sparsifyctl run``
    was started, so they are made absolute, resolved against that folder (found from the run
    folder and its relative ``output``), else the run folder and its parent; the form then
    works from any folder."""
    if run_folder is not None:
        launch = _launch_folder(run_folder, wire.get("output"))
        folder = Path(os.path.abspath(run_folder))
        bases = [b for b in (launch, folder, folder.parent) if b is not None]
        wire = {
            k: _absolute(v, bases) if k in PATH_FIELDS and isinstance(v, str) else v for k, v in wire.items()
        }
    values: dict[str, str] = {}
    for key, value in wire.items():
        if key == "deploy" and isinstance(value, dict):
            for sub, sub_value in value.items():
                name = _PATH_TO_FIELD.get(f"deploy.{_snake(sub)}")
                if name and name in BY_NAME:
                    values[name] = _text(sub_value)
            continue
        name = _PATH_TO_FIELD.get(_snake(key), _snake(key))
        if name not in BY_NAME or value is None:
            continue
        if isinstance(value, dict):
            if value:
                values[name] = json.dumps(value, separators=(", ", ": "))
            continue
        values[name] = _text(value)
    return values


def _parse(name: str, raw: str) -> Any:
    """Form text -> the Python value typer would pass for that flag (or raise InputError)."""
    f = BY_NAME[name]
    raw = raw.strip()
    if raw == "":
        return f.default
    annotation = _ANNOTATIONS.get(name, str)
    base = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    what = f.flag or "type"
    if base[0] is int:
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"{what} must be a whole number, got '{raw}'") from None
    if base[0] is float:
        try:
            return float(raw)
        except ValueError:
            raise InputError(f"{what} must be a number, got '{raw}'") from None
    return raw


def field_for(message: str) -> str:
    """The form field a one-line error is about ('_form' when it names none)."""
    m = re.search(r"field '([^']+)'", message)
    if m:
        path = m.group(1)
        if path.startswith("spec."):
            flag = cli_cluster._FLAG_FOR.get(path)
            if flag and flag in BY_FLAG:
                return BY_FLAG[flag].name
            tail = path.split(".")[-1]
            path = {"queueName": "queue", "secretRef": "secret"}.get(tail, tail)
            return path if path in BY_NAME else "_form"
        snake = ".".join(_snake(part) for part in path.removeprefix("experiment.").split("."))
        if snake in _PATH_TO_FIELD:
            return _PATH_TO_FIELD[snake]
        if snake in BY_NAME:
            return snake
    for flag in re.findall(r"--[a-z][a-z0-9-]*", message):
        if flag in BY_FLAG:
            return BY_FLAG[flag].name
    if message.startswith("unknown experiment type"):
        return "experiment_type"
    return "_form"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _argv(values: dict[str, Any], names: list[str]) -> list[str]:
    argv: list[str] = []
    for name in names:
        f = BY_NAME[name]
        value = values.get(name, f.default)
        if value is None or value == f.default:
            continue
        argv += [f.flag, _text(value)]
    return argv


def build(form: dict[str, str]) -> FormResult:
    """Validate the submitted form; on success fill the commands and the manifest."""
    values = {name: form.get(name, "") for name in BY_NAME}
    result = FormResult(values=values)
    parsed: dict[str, Any] = {}
    for name, raw in values.items():
        try:
            parsed[name] = _parse(name, raw)
        except InputError as err:
            result.errors[name] = str(err)
    if result.errors:
        return result
    experiment_type = parsed.pop("experiment_type")
    flags = {n: parsed[n] for n in EXPERIMENT_PARAMS}
    opts = {n: parsed[n] for n in PLACEMENT if parsed[n] is not None}  # unset: build_manifest's default
    try:
        build_experiment(experiment_type, **flags)
    except InputError as err:
        result.errors[field_for(str(err))] = str(err)
        return result
    exp_flags = _argv(parsed, list(EXPERIMENT_PARAMS))
    result.command = shlex.join(["sparsifyctl", "run", experiment_type, *exp_flags])
    try:
        manifest = cli_cluster.build_manifest(experiment_type, flags, **opts)
    except InputError as err:
        result.cluster_errors[field_for(str(err))] = str(err)
        return result
    generate = ["sparsifyctl", "generate", experiment_type, *exp_flags, *_argv(parsed, list(PLACEMENT))]
    result.generate_command = shlex.join(generate) + " | kubectl apply -f -"
    result.manifest = manifest
    result.manifest_yaml = yaml.safe_dump(manifest, sort_keys=False)
    return result
