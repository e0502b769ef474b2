"""``sparsify-operator``: run the kopf operator with metrics, liveness and peering."""

from __future__ import annotations

import asyncio
import os

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


@app.command()
def run(
    namespace: list[str] = typer.Option(
        None, "--namespace", "-n", help="Watch only these namespaces (repeat; env SPARSIFY_WATCH_NAMESPACES)."
    ),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch the whole cluster."),
    liveness: str = typer.Option(
        os.environ.get("SPARSIFY_LIVENESS", "http://0.0.0.0:8080/healthz"),
        "--liveness",
        help="Liveness endpoint URL ('' disables).",
    ),
    metrics_port: int = typer.Option(
        int(os.environ.get("SPARSIFY_OPERATOR_METRICS_PORT", "8000")),
        "--metrics-port",
        help="Prometheus /metrics port (0 disables).",
    ),
    peering: str = typer.Option(
        os.environ.get("SPARSIFY_PEERING", ""),
        "--peering",
        help="Kopf peering name: one active instance among replicas ('' = standalone).",
    ),
    priority: int = typer.Option(0, "--priority", help="Peering priority of this instance."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Reconcile SparsifyExperiments into Jobs."""
    import kopf
    from prometheus_client import start_http_server

    from . import handlers  # noqa: F401  registers the handlers

    namespaces = list(namespace or []) or _env_list("SPARSIFY_WATCH_NAMESPACES")
    clusterwide = all_namespaces or (not namespaces and os.environ.get("SPARSIFY_CLUSTERWIDE") == "1")
    if not clusterwide and not namespaces:
        typer.echo("error: pass --namespace NS (repeatable) or --all-namespaces", err=True)
        raise typer.Exit(2)
    # kopf's own logging setup (one handler on the root logger; a second one doubled every line)
    kopf.configure(verbose=verbose)
    if metrics_port:
        start_http_server(metrics_port)
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=[] if clusterwide else namespaces,
            liveness_endpoint=liveness or None,
            standalone=not peering,
            peering_name=peering or None,
            priority=priority,
            memo=kopf.Memo(namespaced=not clusterwide),
        )
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
