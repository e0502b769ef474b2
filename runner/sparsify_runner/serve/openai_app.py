"""The fastapi app of ``sparsifyctl serve --task text-generation``: OpenAI-compatible
``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream: true``
answers with server-sent events: ``data: {chunk}`` lines, then ``data: [DONE]``), the health
routes and ``/metrics`` of the Open Inference Protocol app.

Requests run one at a time on the model's onnxruntime session, in a worker thread (the event
loop keeps answering health checks and scrapes while a request decodes); a streaming client
that disconnects stops its generation after the current token. Refusals on ``/v1`` have
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (400 bad request, 404
unknown model, 500 with one line; tracebacks go to the server's log); other routes keep the
app's ``{"error": "..."}``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .app import DEFAULT_MAX_REQUEST_BYTES, LATENCY_BUCKETS, Metrics, _Guard, _version
from .openai_engine import RequestError, Sampling, Step, TextGenerator
from .openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    ErrorBody,
    ErrorDetail,
    ModelCard,
    ModelList,
    Usage,
    new_id,
    now,
    unsupported,
)

log = logging.getLogger("sparsify.serve")

COMPLETION_DEFAULT_TOKENS = 16
"""OpenAI's default ``max_tokens`` for /v1/completions; chat defaults to what the context has left."""
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.status, self.kind, self.code, self.param = status, kind, code, param


def _openai_error(status: int, message: str, *, kind: str, code: str | None = None, param: str | None = None):
    body = ErrorBody(
        error=ErrorDetail(message=" ".join(str(message).split()), type=kind, param=param, code=code)
    )
    return JSONResponse(body.model_dump(), status_code=status)


class LlmMetrics:
    """Token counts and latencies beside the app's request metrics, in the same registry."""

    def __init__(self, base: Metrics) -> None:
        reg, self.model = base.registry, base.model
        self.prompt_tokens = Counter(
            "sparsify_serve_prompt_tokens", "prompt tokens read", ["model"], registry=reg
        )
        self.generated_tokens = Counter(
            "sparsify_serve_generated_tokens", "tokens generated", ["model"], registry=reg
        )
        self.finished = Counter(
            "sparsify_serve_generations",
            "generations by finish reason",
            ["model", "finish_reason"],
            registry=reg,
        )
        self.first_token = Histogram(
            "sparsify_serve_time_to_first_token_seconds",
            "request arrival (queueing included) to the first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.per_token = Histogram(
            "sparsify_serve_time_per_output_token_seconds",
            "decode latency of each token after the first",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=reg,
        )


class _Generation:
    """One prompt's decode, in a worker thread, as an async stream of steps (with metrics)."""

    def __init__(self, gen: TextGenerator, lock: threading.Lock, metrics: LlmMetrics) -> None:
        self.gen, self.lock, self.metrics = gen, lock, metrics

    async def steps(
        self, ids: list[int], budget: int, sampling: Sampling, stops: Sequence[str]
    ) -> AsyncIterator[Step]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        arrived = time.perf_counter()
        m = self.metrics

        def put(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under a generation (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            # the lock is taken in the thread: a cancelled request can never release it early
            try:
                with self.lock:
                    if not cancel.is_set():
                        for step in self.gen.steps(ids, budget, sampling, stops, cancel):
                            put(step)
            except BaseException as err:  # handed to the request's task
                put(err)
            finally:
                put(None)

        loop.run_in_executor(None, work)
        count = 0
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                count += 1
                if count == 1:
                    m.prompt_tokens.labels(m.model).inc(len(ids))
                    m.first_token.labels(m.model).observe(time.perf_counter() - arrived)
                else:
                    m.per_token.labels(m.model).observe(item.seconds)
                m.generated_tokens.labels(m.model).inc()
                if item.finish:
                    m.finished.labels(m.model, item.finish).inc()
                yield item
        finally:
            cancel.set()


def _sse(body: BaseModel | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or the literal ``[DONE]``) and a blank line."""
    data = body if isinstance(body, str) else body.model_dump_json()
    return f"data: {data}\n\n".encode()


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def create_openai_app(gen: TextGenerator, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    metrics = Metrics(gen.name)
    llm_metrics = LlmMetrics(metrics)
    generation = _Generation(gen, threading.Lock(), llm_metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False

    app = FastAPI(
        title="sparsify serve (text-generation)",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ready = False
    app.state.model = gen
    app.state.metrics = metrics
    app.add_middleware(_Guard, limit=max_request_bytes, metrics=metrics)

    def refuse(
        request: Request,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        if request.url.path.startswith("/v1/"):
            return _openai_error(status, message, kind=kind, code=code, param=param)
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    @app.exception_handler(OpenAIError)
    async def _own(request: Request, err: OpenAIError):
        return refuse(request, err.status, str(err), kind=err.kind, code=err.code, param=err.param)

    @app.exception_handler(RequestError)
    async def _request(request: Request, err: RequestError):
        return refuse(request, 400, str(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return refuse(request, err.status_code, str(err.detail), kind=kind)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        return refuse(request, 400, f"{param or 'request body'}: {first.get('msg')}", param=param)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.exception("internal error on %s", request.url.path)
        return refuse(
            request,
            500,
            f"internal server error ({type(err).__name__}); see the server log",
            kind="server_error",
        )

    def check(req: CompletionRequest | ChatCompletionRequest) -> None:
        if req.model != gen.name:
            raise OpenAIError(
                404,
                f"The model '{req.model}' does not exist; this server serves '{gen.name}'",
                code="model_not_found",
                param="model",
            )
        problem = unsupported(req)
        if problem:
            raise OpenAIError(400, problem)
        if not app.state.ready:
            raise OpenAIError(503, "the server is shutting down", kind="server_error")

    def sampling(req: CompletionRequest | ChatCompletionRequest) -> Sampling:
        return Sampling(temperature=req.temperature, top_p=req.top_p, seed=req.seed)

    # ---- health, models, metrics ----------------------------------------------------------
    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not app.state.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    def card() -> ModelCard:
        return ModelCard(id=gen.name, created=gen.created, max_model_len=gen.context)

    @app.get("/v1/models")
    async def models() -> dict:
        return ModelList(data=[card()]).model_dump()

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict:
        if model_id != gen.name:
            raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found")
        return card().model_dump()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- completions ----------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check(req)
        prompts = (
            req.prompt
            if isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int)
            else [req.prompt]
        )
        encoded = [await run_in_threadpool(gen.encode, p) for p in prompts]
        budgets = [gen.budget(len(ids), req.max_tokens, COMPLETION_DEFAULT_TOKENS) for ids in encoded]
        rid, created, stops = new_id("cmpl"), now(), req.stop_strings()

        if req.stream:

            async def events() -> AsyncIterator[bytes]:
                generated = 0
                try:
                    for index, (ids, budget) in enumerate(zip(encoded, budgets, strict=True)):
                        async for step in generation.steps(ids, budget, sampling(req), stops):
                            generated += 1
                            if step.text or step.finish:
                                choice = CompletionChoice(
                                    index=index, text=step.text, finish_reason=step.finish
                                )
                                yield _sse(
                                    Completion(id=rid, created=created, model=gen.name, choices=[choice])
                                )
                    if req.stream_options and req.stream_options.include_usage:
                        usage = _usage(sum(len(i) for i in encoded), generated)
                        yield _sse(
                            Completion(id=rid, created=created, model=gen.name, choices=[], usage=usage)
                        )
                except Exception as err:
                    yield _stream_error(err)
                    return
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream")

        choices, generated = [], 0
        for index, (ids, budget) in enumerate(zip(encoded, budgets, strict=True)):
            text, finish = [], None
            async for step in generation.steps(ids, budget, sampling(req), stops):
                generated += 1
                text.append(step.text)
                finish = step.finish
            choices.append(CompletionChoice(index=index, text="".join(text), finish_reason=finish))
        usage = _usage(sum(len(i) for i in encoded), generated)
        return Completion(id=rid, created=created, model=gen.name, choices=choices, usage=usage).model_dump()

    # ---- chat completions -----------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        check(req)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids = await run_in_threadpool(gen.encode_chat, messages)
        budget = gen.budget(len(ids), req.token_limit(), None)
        rid, created, stops = new_id("chatcmpl"), now(), req.stop_strings()

        def chunk(delta: Delta, finish: str | None = None) -> bytes:
            choice = ChatChunkChoice(index=0, delta=delta, finish_reason=finish)
            return _sse(ChatCompletionChunk(id=rid, created=created, model=gen.name, choices=[choice]))

        if req.stream:

            async def events() -> AsyncIterator[bytes]:
                generated = 0
                try:
                    yield chunk(Delta(role="assistant", content=""))
                    async for step in generation.steps(ids, budget, sampling(req), stops):
                        generated += 1
                        if step.text:
                            yield chunk(Delta(content=step.text))
                        if step.finish:
                            yield chunk(Delta(), step.finish)
                    if req.stream_options and req.stream_options.include_usage:
                        usage = _usage(len(ids), generated)
                        yield _sse(
                            ChatCompletionChunk(
                                id=rid, created=created, model=gen.name, choices=[], usage=usage
                            )
                        )
                except Exception as err:
                    yield _stream_error(err)
                    return
                yield _sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream")

        text, finish, generated = [], "length", 0
        async for step in generation.steps(ids, budget, sampling(req), stops):
            generated += 1
            text.append(step.text)
            finish = step.finish or finish
        choice = ChatChoice(index=0, message=AssistantMessage(content="".join(text)), finish_reason=finish)
        usage = _usage(len(ids), generated)
        return ChatCompletion(
            id=rid, created=created, model=gen.name, choices=[choice], usage=usage
        ).model_dump()

    return app


def _stream_error(err: Exception) -> bytes:
    """An error after the stream began (the status line is already 200): one error event, no [DONE]."""
    if isinstance(err, RequestError):
        detail = ErrorDetail(message=str(err), type="invalid_request_error")
    else:
        log.error("generation failed", exc_info=err)
        detail = ErrorDetail(
            message=f"generation failed ({type(err).__name__}); see the server log", type="server_error"
        )
    return _sse(ErrorBody(error=detail))
