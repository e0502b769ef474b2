"""The fastapi app: Open Inference Protocol endpoints, ``/metrics``, and with a task the
convenience endpoint ``POST /predict``.

Every refusal is the protocol's ``{"error": "..."}`` body with 400 (bad request), 404
(unknown model or route), 413 (body over the limit) or 503 (not ready); an unexpected
failure is a 500 with one line, never a traceback (that goes to the server's log).
"""

from __future__ import annotations

import contextlib
import logging
import time
from importlib import metadata
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..spec import UseCase
from .batching import DynamicBatcher
from .model import ServedModel
from .protocol import (
    HEADER_LENGTH,
    ProtocolError,
    ServerMetadata,
    decode_inputs,
    encode_response,
    parse_request,
    requested_outputs,
)
from .task import ClassifierTask

log = logging.getLogger("sparsify.serve")

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _version() -> str:
    try:
        return metadata.version("sparsify-k8s")
    except metadata.PackageNotFoundError:
        return "0"


def effective_batch_size(model: ServedModel, requested: int | None) -> int:
    """1 for a static batch dimension; else the flag, the run's deploy batch size (when > 1)
    or DEFAULT_MAX_BATCH."""
    if not model.batchable:
        return 1
    if requested is not None:
        return max(1, requested)
    if model.deploy_batch_size and model.deploy_batch_size > 1:
        return model.deploy_batch_size
    return DEFAULT_MAX_BATCH


class Metrics:
    """The app's own registry (two apps in one process never share counters)."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sparsify_serve_requests",
            "HTTP requests by endpoint and status code",
            ["model", "endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sparsify_serve_request_duration_seconds",
            "HTTP request latency",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            "sparsify_serve_batch_size",
            "rows per onnxruntime call after dynamic batching",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "sparsify_serve_requests_in_flight", "requests being handled", ["model"], registry=self.registry
        )
        self.model = model_name


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


class _Guard:
    """Pure ASGI middleware: refuses bodies over the limit with 413 (by Content-Length, or
    while reading a chunked body) and records request count and latency per route."""

    def __init__(self, app, *, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.labels(m.model).inc()
        try:
            refusal: tuple[int, str] | None = None
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None:
                if not length.isdigit():
                    refusal = (400, "Content-Length is not an integer")
                elif int(length) > self.limit:
                    refusal = (
                        413,
                        f"request body of {int(length)} bytes is over the limit of {self.limit} bytes",
                    )
            elif scope.get("method") in ("POST", "PUT", "PATCH"):
                receive, refusal = await self._buffer(receive)
            if refusal is None:
                await self.app(scope, receive, send_wrapper)
            else:
                code, message = refusal
                if code == 413:
                    message += " (--max-request-bytes)"
                await _error(code, message, {"connection": "close"})(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            m.in_flight.labels(m.model).dec()
            m.requests.labels(m.model, endpoint, str(status[0])).inc()
            m.latency.labels(m.model, endpoint).observe(time.perf_counter() - started)

    async def _buffer(self, receive):
        """A body without Content-Length (chunked): read it up to the limit, then replay it."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return receive, (413, f"request body is over the limit of {self.limit} bytes")
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay, None


def create_app(
    model: ServedModel,
    *,
    max_batch_size: int | None = None,
    max_delay_ms: float = 2.0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    task: ClassifierTask | None = None,
) -> FastAPI:
    metrics = Metrics(model.name)
    batch_size = effective_batch_size(model, max_batch_size)
    batcher = DynamicBatcher(
        model.run,
        max_batch_size=batch_size,
        max_delay_s=max_delay_ms / 1000.0,
        on_batch=lambda rows: metrics.batch.labels(model.name).observe(rows),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await batcher.stop()

    app = FastAPI(
        title="sparsify serve",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ready = False
    app.state.model = model
    app.state.max_batch_size = batch_size
    app.state.metrics = metrics
    app.add_middleware(_Guard, limit=max_request_bytes, metrics=metrics)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, err: ProtocolError):
        return _error(err.status, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return _error(err.status_code, err.detail, getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return _error(400, f"{loc}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"internal server error ({type(err).__name__}); see the server log")

    def check_model(name: str, version: str | None = None) -> None:
        if name != model.name:
            raise ProtocolError(404, f"unknown model '{name}'; this server serves '{model.name}'")
        if version not in (None, "1"):
            raise ProtocolError(404, f"unknown version '{version}' of model '{name}'; it has version 1")

    async def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not app.state.ready:
            raise ProtocolError(503, "the server is shutting down")
        try:
            return await batcher.submit(feeds)
        except Exception as err:
            if type(err).__module__.startswith("onnxruntime"):
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                raise ProtocolError(400, f"model '{model.name}' cannot run this input: {first}") from None
            raise

    # ---- health and metadata ----------------------------------------------------------
    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not app.state.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return ServerMetadata(version=_version()).model_dump()

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        check_model(name, version)
        return model.metadata.model_dump()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        check_model(name, version)
        body = {"name": model.name, "ready": bool(app.state.ready)}
        return JSONResponse(body, status_code=200 if app.state.ready else 503)

    # ---- inference --------------------------------------------------------------------
    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_model(name, version)
        body = await request.body()
        req, binary = parse_request(body, request.headers.get(HEADER_LENGTH))
        feeds = decode_inputs(req, binary, model.inputs, model.name)
        selected = requested_outputs(req, model.outputs)
        outputs = await run(feeds)
        content, headers = encode_response(model.name, req.id, outputs, selected)
        return Response(content, headers=headers)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- convenience ------------------------------------------------------------------
    @app.post("/predict")
    async def predict(request: Request, top_k: int = 5) -> dict[str, Any]:
        """An image (multipart field ``file``, repeatable, or a raw image body) or text
        (JSON ``{"text": ...}`` / ``{"texts": [...]}``, optional ``text_pair``/``text_pairs``)
        -> the top classes with their names."""
        if task is None:
            raise ProtocolError(
                404,
                "no task configured; start the server with --task image-classification|text-classification",
            )
        if task.use_case == UseCase.image_classification:
            feeds = await run_in_threadpool(task.preprocess, await _images(request))
        else:
            texts, pairs = await _texts(request)
            feeds = await run_in_threadpool(task.preprocess, texts, pairs)
        outputs = await run(feeds)
        return {"model_name": model.name, "task": task.use_case, "predictions": task.labels(outputs, top_k)}

    return app


async def _images(request: Request) -> list[bytes]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        files = [f for key, f in form.multi_items() if key == "file" and hasattr(f, "read")]
        if not files:
            raise ProtocolError(400, "the form has no 'file' field; send the image as -F file=@image.jpg")
        return [await f.read() for f in files]
    body = await request.body()
    if not body:
        raise ProtocolError(400, "no image; send it as multipart field 'file' or as the raw request body")
    return [body]


async def _texts(request: Request) -> tuple[list[str], list[str] | None]:
    import json

    try:
        raw = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProtocolError(
            400, 'request body is not valid JSON; send {"text": "..."} or {"texts": [...]}'
        ) from None
    if not isinstance(raw, dict):
        raise ProtocolError(400, 'send a JSON object: {"text": "..."} or {"texts": [...]}')

    def strings(key_one: str, key_many: str) -> list[str] | None:
        value = raw.get(key_many, [raw[key_one]] if key_one in raw else None)
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ProtocolError(
                400, f"'{key_many}' must be a non-empty list of strings ('{key_one}': one string)"
            )
        return value

    texts = strings("text", "texts")
    if texts is None:
        raise ProtocolError(400, 'no text; send {"text": "..."} or {"texts": [...]}')
    pairs = strings("text_pair", "text_pairs")
    if pairs is not None and len(pairs) != len(texts):
        raise ProtocolError(400, f"{len(pairs)} text_pairs for {len(texts)} texts; give one per text")
    return texts, pairs
