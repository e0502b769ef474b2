"""``sparsifyctl predict``: predicted latency and speedup per optim level, before optimizing."""

from __future__ import annotations

import typer

from .cli import app


def _floats(text: str, flag: str) -> list[float]:
    from sparsify_runner.errors import InputError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(
            f"{flag} must be comma-separated numbers in [0, 1], e.g. 0.2,0.5; got '{text}'"
        ) from None
    if not values:
        raise InputError(f"{flag} is empty; pass comma-separated numbers in [0, 1], e.g. 0.2,0.5")
    return values


def _names(text: str, flag: str) -> list[str]:
    from sparsify_runner.errors import InputError

    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise InputError(f"{flag} is empty; pass e.g. unstructured,channels")
    return values


@app.command("predict")
def predict_command(
    model: str = typer.Argument(..., help="FP32 ONNX model (static shapes apart from the batch dimension)."),
    deploy_device: str = typer.Option("cpu", "--deploy-device", help="cpu or cuda."),
    deploy_batch_size: int = typer.Option(1, "--deploy-batch-size", help="Batch size on the target."),
    deploy_quant_format: str = typer.Option(
        "auto", "--deploy-quant-format", help="auto (QDQ), qdq or qoperator: the INT8 format shipped."
    ),
    levels: str = typer.Option("0,0.2,0.5,0.8,1.0", "--levels", help="Comma-separated optim levels."),
    structures: str = typer.Option(
        "unstructured,channels", "--structures", help="Comma-separated: unstructured, channels."
    ),
    seconds: float = typer.Option(6.0, "--seconds", help="Micro-benchmark timing budget (seconds)."),
    layers_per_kind: int = typer.Option(
        3, "--layers-per-kind", help="Distinct layer shapes micro-benchmarked per layer kind."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the whole prediction as JSON."),
) -> None:
    """Predict each optim level's latency and speedup on the target, from one profile of the baseline."""
    from pathlib import Path

    from pydantic import ValidationError
    from sparsify_runner.cli import fail
    from sparsify_runner.errors import InputError
    from sparsify_runner.predict import predict
    from sparsify_runner.spec import DeployTarget

    try:
        try:
            deploy = DeployTarget(
                device=deploy_device, batch_size=deploy_batch_size, quant_format=deploy_quant_format
            )
        except ValidationError as err:
            first = err.errors()[0]
            field = {"device": "--deploy-device", "batch_size": "--deploy-batch-size"}.get(
                str(first["loc"][0]), "--deploy-quant-format"
            )
            raise InputError(f"{field}: {first['msg']}") from None
        if layers_per_kind < 1:
            raise InputError(f"--layers-per-kind must be at least 1, got {layers_per_kind}")
        result = predict(
            Path(model),
            deploy,
            _floats(levels, "--levels"),
            _names(structures, "--structures"),
            seconds=seconds,
            layers_per_kind=layers_per_kind,
        )
    except InputError as err:
        fail(err)
    if json_out:
        typer.echo(result.model_dump_json(indent=2))
        return
    _print(result)


# shorter headers for the terminal (the rows' keys stay the dashboard's column names)
_SHORT = {"latency ms": "ms", "without INT8": "no INT8"}


def _print(result) -> None:
    """The profile and one prediction table per structure, narrow enough for an 80-column
    terminal; a cell that still does not fit folds onto a second line, never cut with '…'."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    d = result.deploy
    console.print(
        f"model: {result.model}   target: onnxruntime {result.onnxruntime} {d.device}, "
        f"batch {d.batch_size}   baseline: {result.baseline_latency_ms:.3f} ms",
        overflow="fold",
    )
    where = Table(title="where the baseline spends its time", title_justify="left")
    for col in ("layer kind", "nodes", "time", "INT8 factor (measured)"):
        where.add_column(col, justify="left" if col == "layer kind" else "right", overflow="fold")
    for k in result.kinds:
        factor = (
            f"{k.int8_factor:.2f}x ({k.int8_low:.2f}-{k.int8_high:.2f})" if k.int8_factor is not None else "-"
        )
        where.add_row(k.label, str(k.nodes), f"{k.share:.1%}", factor)
    console.print(where)
    rows = result.rows()
    for structure in dict.fromkeys(row.get("structure", "") for row in rows):
        table = Table(title=f"predicted on the target: {structure} pruning", title_justify="left")
        keys = [k for k in rows[0] if k not in ("pathways", "structure")]
        for key in keys:
            table.add_column(_SHORT.get(key, key), justify="right", overflow="fold")
        for row in rows:
            if row.get("structure", "") == structure:
                table.add_row(*(row[k] for k in keys))
        console.print(table)
    delivered = {p.structure: ", ".join(p.pathways) for p in result.points if p.sparsity or p.macs_reduction}
    for structure, ways in delivered.items():
        console.print(f"{structure} pruning today: {ways}", overflow="fold")
    for note in result.notes:
        console.print(f"note: {note}", overflow="fold")
    console.print(
        "ms: predicted latency per batch; no INT8: the pruning alone. Per-point assumptions: --json; "
        "unstructured sparsity counts x1.0 on onnxruntime",
        overflow="fold",
    )
