"""Local commands: ``sparsifyctl run`` (the embedded default: no cluster, local files)."""

from __future__ import annotations

from typing import Any

import typer

from .cli import app
from .experiment_options import build_experiment, with_experiment_options


@app.command("run")
@with_experiment_options
def run_command(
    experiment_type: str = typer.Argument(..., help="one-shot, sparse-transfer or training-aware"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary table."),
    flags: dict[str, Any] | None = None,
) -> None:
    """Sparsify a model on this machine and write model.onnx + report.json."""
    from sparsify_runner.cli import execute  # lazy: the runner's heavy imports stay out of the CLI

    execute(lambda: build_experiment(experiment_type, **(flags or {})), quiet=quiet)
