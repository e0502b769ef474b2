"""``sparsifyctl dashboard``: serve the local web app (uvicorn) over runs and, with --cluster, the cluster.

Bound to 127.0.0.1 by default. Bound to any other address it requires a token (generated
and printed here unless ``--token`` / ``SPARSIFY_DASHBOARD_TOKEN`` gives one).
"""

from __future__ import annotations

import ipaddress
import os
import socket

import typer

from .cli import app

TOKEN_ENV = "SPARSIFY_DASHBOARD_TOKEN"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        _fail(f"--host '{host}' cannot be resolved ({err.strerror}); pass an address such as 127.0.0.1")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        _fail(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port")
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@app.command("dashboard")
def dashboard_command(
    runs: list[str] = typer.Option(
        None,
        "--runs",
        metavar="DIR|s3://...",
        help="Runs folder (searched two levels deep) or s3:// prefix; repeatable.",
    ),
    cluster: bool = typer.Option(
        False, "--cluster", help="Also show (and apply to) the current kube context."
    ),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", metavar="NS", help="Cluster namespace (default: context's)."
    ),
    context: str | None = typer.Option(
        None, "--context", metavar="NAME", help="Kube context (default: current)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", metavar="ADDR", help="Address to bind (anything but loopback needs a token)."
    ),
    port: int = typer.Option(
        8765, "--port", min=0, max=65535, metavar="PORT", help="Port (0: any free port)."
    ),
    predict_seconds: float = typer.Option(
        6.0,
        "--predict-seconds",
        min=0.05,
        metavar="S",
        help="Micro-benchmark budget of the predict page (as `sparsifyctl predict --seconds`).",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        metavar="TOKEN",
        help=f"Access token (or ${TOKEN_ENV}); generated when bound beyond loopback.",
    ),
) -> None:
    """Serve a local web app: runs and sweeps, one run's report, compare, predict, new experiment."""
    try:
        import uvicorn

        from .dashboard.app import LOOPBACK_HOSTS, create_app, new_token
        from .dashboard.sources import ClusterTarget
    except ModuleNotFoundError as err:
        _fail(f"the '{err.name}' package is missing; install sparsify-k8s[dashboard]")
    sources = list(runs or [])
    if not sources and not cluster:
        sources = ["."]
    for src in sources:
        if "://" in src and not src.startswith("s3://"):
            _fail(f"--runs '{src}' is neither a folder nor an s3:// prefix")
        if "://" not in src and not os.path.isdir(src):
            _fail(f"--runs '{src}' is not a folder; pass the folder holding your run outputs")
    target = None
    if cluster:
        from .cli_cluster import _client, _namespace

        target = ClusterTarget(
            kube=_client(context), namespace=_namespace(namespace, context), context=context
        )
    token = token or os.environ.get(TOKEN_ENV) or None
    generated = False
    loopback = is_loopback(host)
    if token is None and not loopback:
        token, generated = new_token(), True
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{bound_port}/"
    typer.echo(f"sparsify dashboard on {url}" + ("" if loopback else " (not loopback: token required)"))
    if generated:
        typer.echo(f"open {url}?token={token}")
    allowed = list(LOOPBACK_HOSTS) if loopback else None
    web = create_app(sources, target, token, allowed_hosts=allowed, predict_seconds=predict_seconds)
    config = uvicorn.Config(web, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
