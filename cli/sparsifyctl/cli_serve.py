"""``sparsifyctl serve``: an Open Inference Protocol (KServe v2 REST) server on onnxruntime.

A thin wrapper: the server lives in the runner (``sparsify_runner.serve``, the ``serve``
extra) and is imported only when the command runs."""

from __future__ import annotations

import typer

from .cli import app


@app.command("serve")
def serve_command(
    model: str = typer.Argument(
        ...,
        help="MODEL.onnx, a run's output folder (model.onnx + report.json), or s3://... / https://...; with "
        "--task text-generation: a text-generation run's output folder (its onnx/ export) or onnx/ itself",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="image-classification or text-classification: adds POST /predict taking an image or text "
        "(preprocessing and class names stored with the model by the training pathways); text-generation: "
        "serves the CPU export with OpenAI-compatible /v1/completions and /v1/chat/completions.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 in a container)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0 = any free port, printed)."),
    name: str | None = typer.Option(
        None, "--name", help="Model name in URLs (default: the experiment's name, else the folder/file stem)."
    ),
    max_batch_size: int | None = typer.Option(
        None,
        "--max-batch-size",
        min=1,
        help="Rows per onnxruntime call when batching concurrent requests (default: the run's deploy batch "
        "size when > 1, else 8; 1 = off; a static batch dimension turns batching off).",
    ),
    max_delay_ms: float = typer.Option(
        2.0, "--max-delay-ms", min=0.0, help="How long the first request of a batch waits for company."
    ),
    max_request_bytes: int = typer.Option(
        64 * 1024 * 1024, "--max-request-bytes", min=1, help="Larger request bodies get 413."
    ),
    graceful_timeout: float = typer.Option(
        30.0, "--graceful-timeout", min=0.0, help="Seconds in-flight requests get to finish on SIGTERM."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (CUDA provider when present)."),
    threads: int = typer.Option(
        0, "--threads", min=0, help="onnxruntime intra-op threads (0 = its default)."
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
) -> None:
    """Serve an ONNX model over HTTP (KServe v2 / Open Inference Protocol; OpenAI-compatible for
    --task text-generation) until SIGTERM."""
    try:
        import sparsify_runner.serve.app  # noqa: F401  (fastapi, prometheus_client)
        from sparsify_runner.serve.server import run_server  # uvicorn
    except ImportError as err:
        typer.echo(
            f"error: sparsifyctl serve needs the 'serve' extra ({err.name} is missing); "
            "pip install 'sparsify-k8s[runner,serve]'",
            err=True,
        )
        raise typer.Exit(2) from None
    from sparsify_runner.cli import fail
    from sparsify_runner.errors import SparsifyError

    try:
        code = run_server(
            model,
            task=task,
            host=host,
            port=port,
            name=name,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            max_request_bytes=max_request_bytes,
            graceful_timeout_s=graceful_timeout,
            device=device,
            threads=threads,
            access_log=access_log,
        )
    except SparsifyError as err:
        fail(err)
    raise typer.Exit(code)
