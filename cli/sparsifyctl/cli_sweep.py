"""``sparsifyctl sweep``: run one experiment at several optim levels (and structures) locally.

Each point writes its own ``<output>/<point>/`` (model.onnx, report.json, _SUCCESS.json);
a point whose finished result is already there is reused, so an interrupted sweep resumes
where it stopped. The grid result (table, best point, Pareto fronts) goes to
``<output>/sweep.json``. The same grid on a cluster: ``sparsifyctl generate --sweep``.
"""

from __future__ import annotations

from typing import Any

import typer

from .cli import app
from .experiment_options import build_experiment, with_experiment_options


def sweep_grid(
    flags: dict[str, Any], optim_levels: str | None, structures: str | None
) -> tuple[list[float], list[str], dict[str, Any]]:
    """The grid from the flags; ``--structure a,b`` works as ``--structures a,b``. Returns the
    flags with a single structure so the base experiment validates. Raises InputError."""
    from sparsify_runner.errors import InputError
    from sparsify_runner.sweep import parse_levels, parse_structures

    if optim_levels is None:
        raise InputError("missing --optim-levels; pass the levels to try, e.g. --optim-levels 0.2,0.5,0.8")
    # --max-accuracy-drop picks the sweep's best point; each point keeps its own level's budget
    flags = {**flags, "max_accuracy_drop": None}
    levels = parse_levels(optim_levels)
    if structures is not None:
        chosen = parse_structures(structures, "--structures")
    else:
        chosen = parse_structures(flags.get("structure") or "unstructured", "--structure")
    return levels, chosen, {**flags, "structure": chosen[0]}


def sweep_objective(flags: dict[str, Any], min_fidelity: float | None):
    """The sweep's best-point rule from the experiment's --objective (speed/speedup, size/compression)
    and --max-accuracy-drop (default 0.01)."""
    from pydantic import ValidationError
    from sparsify_runner.errors import InputError
    from sparsify_runner.sweep import SweepObjective

    objective = str(flags.get("objective") or "speed").strip().lower()
    objective = {"speed": "speedup", "size": "compression"}.get(objective, objective)
    drop = flags.get("max_accuracy_drop")
    try:
        return SweepObjective(
            maximize=objective, max_accuracy_drop=0.01 if drop is None else drop, min_fidelity=min_fidelity
        )
    except ValidationError as err:
        first = err.errors()[0]
        flag = {"maximize": "--objective", "max_accuracy_drop": "--max-accuracy-drop"}.get(
            str(first["loc"][0]), "--min-fidelity"
        )
        hint = "speed or size" if flag == "--objective" else "a number from 0 to 1"
        raise InputError(f"{flag}: {first['msg'].removeprefix('Value error, ')}; use {hint}") from None


_LEVELS = typer.Option(None, "--optim-levels", help="Comma-separated optim levels, e.g. 0.2,0.5,0.8.")
_STRUCTURES = typer.Option(
    None, "--structures", help="unstructured, channels or both (comma-separated; default: --structure)."
)
_FIDELITY = typer.Option(None, "--min-fidelity", help="Also require this fidelity to the baseline.")


@app.command("sweep")
@with_experiment_options
def sweep_command(
    experiment_type: str = typer.Argument(..., help="one-shot, sparse-transfer or training-aware"),
    optim_levels: str | None = _LEVELS,
    structures: str | None = _STRUCTURES,
    parallel: int = typer.Option(1, "--parallel", help="Points run at once (worker processes)."),
    min_fidelity: float | None = _FIDELITY,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or table."),
    flags: dict[str, Any] | None = None,
) -> None:
    """Run the experiment at every optim level (x structure) and pick the best point."""
    import logging

    from sparsify_runner.cli import fail
    from sparsify_runner.errors import InputError
    from sparsify_runner.sweep import SWEEP_FILE, run_local_sweep

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if parallel < 1:
            raise InputError(f"--parallel must be at least 1, got {parallel}")
        goal = sweep_objective(flags or {}, min_fidelity)
        levels, chosen, base_flags = sweep_grid(flags or {}, optim_levels, structures)
        base = build_experiment(experiment_type, **base_flags)

        def progress(point) -> None:
            extra = " (reused the finished result)" if point.reused else ""
            extra += f": {point.message}" if point.message else ""
            typer.echo(f"point {point.name}: {point.phase}{extra}", err=True)

        result = run_local_sweep(
            base,
            levels,
            chosen,
            base.output,
            parallel=parallel,
            objective=goal,
            show_progress=not quiet,
            on_point=progress,
        )
    except InputError as err:
        fail(err)
    _print_result(result, quiet)
    typer.echo(f"wrote {base.output.rstrip('/')}/{SWEEP_FILE}")
    if result.phase == "Failed":
        bad_input = all((p.message or "").startswith("exit 2:") for p in result.points)
        typer.echo(f"error: all {len(result.points)} points failed; see the messages above", err=True)
        raise typer.Exit(2 if bad_input else 1)


def _print_result(result, quiet: bool) -> None:
    if not quiet:
        from rich.console import Console
        from sparsify_runner.sweep import sweep_table

        console = Console()
        # piped output: wide enough for the table instead of rich's 80-column default
        (console if console.is_terminal else Console(width=140)).print(sweep_table(result))
    best = result.best
    typer.echo(f"best: {best.name or '-'} ({best.reason})" if best else "best: - (no point succeeded)")
    typer.echo(f"pareto accuracy vs latency: {', '.join(result.pareto.latency) or '-'}")
    typer.echo(f"pareto accuracy vs size: {', '.join(result.pareto.size) or '-'}")


# ---- `sparsifyctl generate --sweep`: the same grid as a SparsifySweep manifest ------------------------


def sweep_request(
    flags: dict[str, Any],
    optim_levels: str | None,
    structures: str | None,
    parallelism: int,
    min_fidelity: float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(experiment flags with one structure, the sweep's spec fields beside ``template``).
    Raises InputError with one line."""
    from sparsify_runner.errors import InputError

    if parallelism < 1:
        raise InputError(f"--parallelism must be at least 1, got {parallelism}")
    goal = sweep_objective(flags, min_fidelity)
    levels, chosen, base_flags = sweep_grid(flags, optim_levels, structures)
    fields = {
        "optimLevels": levels,
        "structures": chosen,
        "parallelism": parallelism,
        "objective": goal.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return base_flags, fields


def sweep_manifest(experiment: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """A generated SparsifyExperiment manifest -> the SparsifySweep over ``fields``' grid
    (validated with the CRD's model; a bad value exits 2 with one line)."""
    from pydantic import ValidationError
    from sparsify_operator.sweep_models import API_VERSION, SWEEP_KIND, SparsifySweepSpec
    from sparsify_runner.cli import fail
    from sparsify_runner.errors import InputError

    template = {**experiment["spec"]}
    template["experiment"] = {k: v for k, v in template["experiment"].items() if k != "optimLevel"}
    spec = {"template": template, **fields}
    try:
        SparsifySweepSpec.model_validate(spec)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(["spec", *(str(p) for p in first["loc"])])
        fail(InputError(f"invalid field '{where}': {first['msg'].removeprefix('Value error, ')}"))
    metadata = dict(experiment["metadata"])
    return {"apiVersion": API_VERSION, "kind": SWEEP_KIND, "metadata": metadata, "spec": spec}
