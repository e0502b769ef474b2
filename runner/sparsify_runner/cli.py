"""``sparsify-runner``: the runner image's entry point (also used by ``sparsifyctl run``)."""

from __future__ import annotations

import logging
import sys

import typer

from .errors import EXIT_INTERNAL, SparsifyError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)


@app.callback()
def _root() -> None:
    """Sparsify one experiment (one-shot, sparse-transfer, training-aware)."""


@app.command("run")
def run_command(
    experiment: str = typer.Option(
        ..., "--experiment", "-e", help="Experiment JSON/YAML file or inline JSON."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or summary table."),
    termination_log: str | None = typer.Option(
        None, "--termination-log", envvar="SPARSIFY_TERMINATION_LOG",
        help="Where to write the JSON run summary (default /dev/termination-log).",
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", envvar="SPARSIFY_METRICS_PORT", min=0, max=65535,
        help="Serve Prometheus /metrics on this port while running (off by default).",
    ),
) -> None:
    """Run an experiment from a file: the same code path as ``sparsifyctl run``."""
    from .spec import load_experiment

    execute(lambda: load_experiment(experiment), quiet=quiet, termination_log=termination_log,
            metrics_port=metrics_port)


def execute(
    make_experiment,
    *,
    quiet: bool = False,
    termination_log: str | None = None,
    metrics_port: int | None = None,
) -> None:
    """Build the experiment, run it, print the summary; map errors to one line + exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        exp = make_experiment()
    except SparsifyError as err:
        from .run import fail_before_run

        fail_before_run(err, termination_log)
        fail(err)
    from .run import run_experiment

    try:
        report = run_experiment(
            exp, show_progress=not quiet, termination_log=termination_log, metrics_port=metrics_port
        )
    except SparsifyError as err:
        fail(err)
    except KeyboardInterrupt:
        typer.echo("error: interrupted; nothing was published", err=True)
        raise typer.Exit(130) from None
    if not quiet:
        from .summary import print_summary

        print_summary(report)


def fail(err: BaseException) -> None:
    from .storage.common import redact

    typer.echo(f"error: {redact(str(err))}", err=True)
    raise typer.Exit(getattr(err, "exit_code", EXIT_INTERNAL))


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
