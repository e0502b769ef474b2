"""uvicorn around the app, with a graceful stop that counts as success.

SIGTERM (``kubectl delete``, a rolling update) or Ctrl-C: stop accepting connections, let
in-flight requests finish (up to ``graceful_timeout_s``), drain the batcher, exit 0.
(uvicorn's own handler re-raises the signal after its shutdown, which would end the
process with -15 instead.) The socket is bound before uvicorn starts, so ``--port 0`` can
print the port it got."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import uvicorn

from ..errors import InputError


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it Nagle holds the response body until the
    # client ACKs the headers, and delayed ACKs make that ~40 ms per keep-alive request
    # (measured: 45 ms -> under 1 ms for /v2/health/live).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, *, graceful_timeout_s: float = 30.0, access_log: bool = False) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout_s,
        server_header=False,
    )
    return _Server(config)


def serve(app, sock: socket.socket, *, graceful_timeout_s: float = 30.0, access_log: bool = False) -> int:
    """Run until SIGTERM/SIGINT; the exit code (0 after a graceful stop)."""
    server = make_server(app, graceful_timeout_s=graceful_timeout_s, access_log=access_log)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    print("sparsify serve: stopped", file=sys.stderr, flush=True)
    return 0


def run_server(
    source: str,
    *,
    task: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    name: str | None = None,
    max_batch_size: int | None = None,
    max_delay_ms: float = 2.0,
    max_request_bytes: int = 64 * 1024 * 1024,
    graceful_timeout_s: float = 30.0,
    device: str = "cpu",
    threads: int = 0,
    access_log: bool = False,
) -> int:
    """``sparsifyctl serve``: resolve and load the model, check the task, bind, serve.
    Every problem before the first request is an InputError (one line, exit 2)."""
    from ..spec import UseCase, normalize_use_case
    from .app import create_app
    from .model import load, resolve
    from .task import make_task

    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda, got '{device}'")
    if task is not None and normalize_use_case(task) == UseCase.text_generation:
        if device != "cpu":
            raise InputError("--task text-generation serves the CPU export; use --device cpu")
        return _run_llm_server(
            source,
            host=host,
            port=port,
            name=name,
            max_request_bytes=max_request_bytes,
            graceful_timeout_s=graceful_timeout_s,
            threads=threads,
            access_log=access_log,
        )
    model = load(resolve(source, name), device=device, threads=threads)
    handler = make_task(task, model) if task else None
    app = create_app(
        model,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        max_request_bytes=max_request_bytes,
        task=handler,
    )
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    batching = (
        f"dynamic batching up to {app.state.max_batch_size}"
        if app.state.max_batch_size > 1
        else "no batching (static batch dimension)"
        if not model.batchable
        else "no batching"
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"sparsify serve: model '{model.name}' on http://{shown}:{bound}/v2/models/{model.name} "
        f"({batching}{', task ' + handler.use_case + ' at POST /predict' if handler else ''})",
        file=sys.stderr,
        flush=True,
    )
    return serve(app, sock, graceful_timeout_s=graceful_timeout_s, access_log=access_log)


def _run_llm_server(
    source: str,
    *,
    host: str,
    port: int,
    name: str | None,
    max_request_bytes: int,
    graceful_timeout_s: float,
    threads: int,
    access_log: bool,
) -> int:
    """``--task text-generation``: the CPU export behind OpenAI-compatible routes."""
    from .openai_app import create_openai_app
    from .openai_engine import TextGenerator, resolve_llm

    generator = TextGenerator(resolve_llm(source, name), threads=threads)
    app = create_openai_app(generator, max_request_bytes=max_request_bytes)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"sparsify serve: model '{generator.name}' on http://{shown}:{sock.getsockname()[1]}/v1 "
        f"(OpenAI-compatible /v1/completions and /v1/chat/completions, one request at a time, "
        f"context {generator.context} tokens)",
        file=sys.stderr,
        flush=True,
    )
    return serve(app, sock, graceful_timeout_s=graceful_timeout_s, access_log=access_log)
