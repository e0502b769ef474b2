"""``sparsifyctl``: run locally, generate/apply manifests, benchmark, compare.

Sub-command modules register themselves on ``app``; this module only assembles them and
turns every user error (ours or the argument parser's) into one line on stderr, exit 2.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Sparsify models locally or on Kubernetes.",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"sparsifyctl {version('sparsify-k8s')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("sparsifyctl (not installed: no version metadata)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Sparsify models locally or on Kubernetes."""


def _register() -> None:
    # Each module adds its commands to `app`; imports stay light (no torch, no kubernetes).
    from . import cli_local  # noqa: F401  run, benchmark, compare

    for optional in ("cli_cluster", "cli_catalog", "cli_sweep", "cli_predict", "cli_serve", "cli_dashboard"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{optional}":
                raise


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(130)
    except typer.TyperException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            err.show()
            sys.exit(0)
        typer.echo(f"error: {err.format_message()} (see --help)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
