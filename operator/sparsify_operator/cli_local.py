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
            payload["speedup"] = round(results[1][1].mean_ms / results[0][1].mean_ms, 4)
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
        ratio = b.mean_ms / a.mean_ms if a.mean_ms else float("nan")
        typer.echo(f"speedup of {results[0][0]} over {results[1][0]}: {ratio:.2f}x (mean latency)")


@app.command("compare")
def compare_command(
    reports: list[str] = typer.Argument(..., help="report.json files or output folders containing one."),
) -> None:
    """Side-by-side table of several experiments' report.json."""
    from sparsify_runner.cli import fail
    from sparsify_runner.errors import InputError

    try:
        loaded = [_load_report(r) for r in reports]
    except InputError as err:
        fail(err)
    _print_compare(loaded)


def _load_report(source: str):
    import json
    from pathlib import Path

    from pydantic import ValidationError
    from sparsify_runner.errors import InputError
    from sparsify_runner.report import Report

    path = Path(source)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise InputError(
            f"report '{path}' does not exist; pass a report.json or an output folder containing one"
        )
    try:
        return str(source), Report.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise InputError(f"report '{path}' is not readable JSON ({type(err).__name__})") from None
    except ValidationError as err:
        loc = ".".join(str(p) for p in err.errors()[0]["loc"])
        raise InputError(f"report '{path}' is not a sparsify report.json (field '{loc}' invalid)") from None


def _print_compare(loaded: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.2%}"

    def fid(r) -> str:
        if r.fidelity is None:
            return "-"
        return (
            pct(r.fidelity.top1_agreement)
            if r.fidelity.top1_agreement is not None
            else (f"cos {r.fidelity.cosine_similarity:.4f}")
        )

    rows: list[tuple[str, Any]] = [
        ("type", lambda r: str(r.experiment.get("type", "-"))),
        ("optim level", lambda r: str(r.experiment.get("optimLevel", "-"))),
        ("mode", lambda r: r.mode),
        ("baseline accuracy", lambda r: pct(r.baseline.accuracy)),
        ("optimized accuracy", lambda r: pct(r.optimized.accuracy)),
        ("fidelity", fid),
        ("baseline latency", lambda r: f"{r.baseline.latency.mean_ms:.2f} ms" if r.baseline.latency else "-"),
        (
            "optimized latency",
            lambda r: f"{r.optimized.latency.mean_ms:.2f} ms" if r.optimized.latency else "-",
        ),
        ("speedup", lambda r: f"{r.speedup:.2f}x" if r.speedup else "-"),
        ("sparsity", lambda r: pct(r.optimized.sparsity)),
        ("file size", lambda r: f"{r.optimized.file_size_bytes / 1e6:.2f} MB"),
        ("gzip size", lambda r: f"{r.optimized.compressed_size_bytes / 1e6:.2f} MB"),
        ("INT8 choice", lambda r: next((c.name for c in r.candidates if c.chosen), "-")),
    ]
    table = Table(title="experiments side by side", title_justify="left")
    table.add_column("")
    for name, _ in loaded:
        table.add_column(name, justify="right")
    for label, get in rows:
        table.add_row(label, *[get(r) for _, r in loaded])
    Console().print(table)
