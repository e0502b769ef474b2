"""``sparsifyctl catalog``: the sparse-transfer base-model catalog (register, list)."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli import app

catalog_app = typer.Typer(no_args_is_help=True, help="Sparse-transfer base-model catalog.")
app.add_typer(catalog_app, name="catalog")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(getattr(err, "exit_code", 1))


@catalog_app.command("register")
def register_command(
    run_output: Path = typer.Argument(
        ..., help="Output folder of a finished training run (report.json + model.pt)."
    ),
    catalog: Path = typer.Option(..., "--catalog", help="Catalog YAML/JSON file (created when missing)."),
    name: str | None = typer.Option(
        None, "--name", help="Entry name (default: experiment name or folder name)."
    ),
    dataset: str | None = typer.Option(None, "--dataset", help="Dataset the model was trained on."),
    description: str | None = typer.Option(None, "--description", help="Free text."),
) -> None:
    """Add a training-aware result as a sparse-transfer base model."""
    from sparsify_runner.catalog import entry_from_run, register
    from sparsify_runner.errors import SparsifyError

    try:
        entry = entry_from_run(run_output, catalog, name=name, dataset=dataset, description=description)
        result = register(catalog, entry)
    except SparsifyError as err:
        _fail(err)
    typer.echo(
        f"registered '{entry.name}' ({entry.use_case}, sparsity {entry.sparsity:.0%}) in {catalog} "
        f"({len(result.models)} models)"
    )


@catalog_app.command("list")
def list_command(
    catalog: Path = typer.Option(..., "--catalog", help="Catalog YAML/JSON file."),
    use_case: str | None = typer.Option(None, "--use-case", help="Only this use case."),
    optim_level: float | None = typer.Option(None, "--optim-level", help="Mark the entry this level picks."),
) -> None:
    """List base models (largest first, per use case) and which one an optim level picks."""
    from rich.console import Console
    from rich.table import Table
    from sparsify_runner.catalog import load_catalog, select
    from sparsify_runner.errors import SparsifyError
    from sparsify_runner.spec import normalize_use_case

    if not catalog.is_file():
        _fail(FileNotFoundError(f"catalog '{catalog}' does not exist"))
    try:
        cat = load_catalog(catalog)
        use_cases = [normalize_use_case(use_case)] if use_case else sorted({e.use_case for e in cat.models})
        table = Table("use case", "name", "parameters", "sparsity", "accuracy", "structure", "uri", "picked")
        for uc in use_cases:
            picked, ordered = select(cat, uc, optim_level if optim_level is not None else 0.0)
            for e in ordered:
                mark = "<-" if optim_level is not None and e is picked else ""
                table.add_row(
                    uc,
                    e.name,
                    f"{e.parameters:,}" if e.parameters else "-",
                    f"{e.sparsity:.0%}",
                    f"{e.accuracy:.4f}" if e.accuracy is not None else "-",
                    e.structure,
                    e.uri,
                    mark,
                )
    except SparsifyError as err:
        _fail(err)
    Console(width=160).print(table)
