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


@app.command("benchmark")
def benchmark_command(
    model: str = typer.Argument(..., help="ONNX model to time."),
    compare: str | None = typer.Option(
        None, "--compare", help="A second ONNX model timed alongside (e.g. the baseline)."
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Batch size."),
    scenario: str = typer.Option(
        "sync", "--scenario", help="sync (one request at a time) or async (concurrent)."
    ),
    seconds: float = typer.Option(10.0, "--time", "-t", min=0.1, help="Seconds of timing per model."),
    streams: int = typer.Option(2, "--streams", min=1, help="Concurrent requests in the async scenario."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (CUDA provider when present)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Measure latency and throughput on onnxruntime (the role deepsparse.benchmark plays)."""
    from sparsify_runner.cli import fail
    from sparsify_runner.errors import InputError

    try:
        if scenario not in ("sync", "async"):
            raise InputError(f"--scenario must be sync or async, got '{scenario}'")
        if device not in ("cpu", "cuda"):
            raise InputError(f"--device must be cpu or cuda, got '{device}'")
        results = _benchmark(model, compare, batch_size, scenario, seconds, streams, device)
    except InputError as err:
        fail(err)
    _print_benchmark(results, scenario, json_out)


def _benchmark(
    model: str, compare: str | None, batch_size: int, scenario: str, seconds: float, streams: int, device: str
) -> list[tuple[str, Any]]:
    from pathlib import Path

    from sparsify_runner.benchmark import measure_async, measure_latency
    from sparsify_runner.onnx_model import load_onnx

    paths = [Path(model)] + ([Path(compare)] if compare else [])
    for p in paths:
        load_onnx(p, flag="")  # one clear line for missing / non-ONNX files
    if scenario == "sync":
        stats = measure_latency(
            paths, batch_size=batch_size, device=device, seconds=seconds, show_progress=True
        )
    else:
        stats = [
            measure_async(p, batch_size=batch_size, device=device, seconds=seconds, streams=streams)
            for p in paths
        ]
    return [(str(p), s) for p, s in zip(paths, stats, strict=True)]


def _print_benchmark(results: list[tuple[str, Any]], scenario: str, json_out: bool) -> None:
    import json

    if json_out:
        payload: dict[str, Any] = {
            "scenario": scenario,
            "models": [{"model": p, **s.model_dump()} for p, s in results],
        }
        if len(results) == 2:
            payload["speedup"] = round(results[1][1].median_ms / results[0][1].median_ms, 4)
        typer.echo(json.dumps(payload, indent=2))
        return
    for path, s in results:
        typer.echo(f"model: {path}")
        typer.echo(f"  scenario: {scenario}   provider: {s.provider}   batch size: {s.batch_size}")
        typer.echo(f"  throughput (items/sec): {s.throughput_items_per_s:.2f}")
        typer.echo(f"  latency mean (ms/batch): {s.mean_ms:.4f}")
        typer.echo(f"  latency median (ms/batch): {s.median_ms:.4f}")
        typer.echo(f"  latency p90 (ms/batch): {s.p90_ms:.4f}")
        typer.echo(f"  latency std (ms/batch): {s.std_ms:.4f}")
        typer.echo(f"  iterations: {s.iterations}")
    if len(results) == 2:
        a, b = results[0][1], results[1][1]
        ratio = b.median_ms / a.median_ms if a.median_ms else float("nan")
        typer.echo(f"speedup of {results[0][0]} over {results[1][0]}: {ratio:.2f}x (median latency)")
    contention = results[0][1].contention_note() if scenario == "sync" else None
    if contention:
        typer.echo(f"note: {contention}", err=True)


@app.command("compare")
def compare_command(
    runs: list[str] = typer.Argument(
        ...,
        metavar="RUN",
        help="Runs to compare: output folders or report.json files, s3:// prefixes, or NAMESPACE/NAME of a "
        "cluster experiment or sweep (a sweep or a folder of runs expands to its runs).",
    ),
    html: str | None = typer.Option(
        None, "--html", help="Also write a self-contained HTML page (table + Pareto plots) to this file."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON instead of a table."),
    context: str | None = typer.Option(
        None, "--context", help="Kube context for NAMESPACE/NAME runs (default: current)."
    ),
) -> None:
    """Side-by-side table of several runs, one column per experiment name (accuracy, median latency,
    speedup, size, sparsity when pruned, INT8 choice)."""
    from sparsify_runner.cli import fail
    from sparsify_runner.errors import SparsifyError

    from . import compare

    try:
        records = compare.load_runs(runs, context=context)
        if html is not None:
            _write_atomic(html, compare.compare_html(records))
    except SparsifyError as err:
        fail(err)
    if json_out:
        import json

        typer.echo(json.dumps(compare.compare_json(records), indent=2))
    else:
        _print_compare(records, compare.compare_table(records))
    if html is not None:
        typer.echo(f"wrote {html}", err=True)


def _write_atomic(target: str, text: str) -> None:
    """Write next to the target, then rename: a reader never sees half a page."""
    import os
    import tempfile
    from pathlib import Path

    from sparsify_runner.errors import InputError

    path = Path(target).expanduser()
    if path.is_dir():
        raise InputError(f"--html '{target}' is a folder; pass a file name such as compare.html")
    if not path.parent.is_dir():
        raise InputError(f"--html '{target}': folder '{path.parent}' does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise InputError(f"--html '{target}' cannot be written ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _print_compare(records: list[Any], rows: list[tuple[str, list[str]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="experiments side by side", title_justify="left")
    table.add_column("")
    for record in records:
        table.add_column(record.label, justify="right", overflow="fold")
    for label, cells in rows:
        table.add_row(label, *cells)
    console = Console()
    console.print(table)
    for record in records:  # columns are named by experiment: say where each came from
        if record.source and record.source != record.label:
            console.print(f"{record.label}: {record.source}", overflow="fold", highlight=False)
