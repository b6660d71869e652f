"""`slm serve`: the OpenAI-compatible HTTP API on FastAPI, over one opened model and its decoding `Engine`.

Requests are validated by pydantic (`serve.protocol`) and every refusal is OpenAI's error JSON with a 4xx
status: a bad parameter 400, a missing key 401, an unknown model 404, a full queue 429 with Retry-After. The
API key and the metrics are a plain ASGI layer around the whole app, so no route (the OpenAPI document, the
page, /metrics) can be left out of the key by accident; only /health is open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import torch
from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from slmkit.errors import SlmError
from slmkit.runtime.generate import GENERATING_KINDS, applies_template, prompt_ids, text_ids
from slmkit.runtime.interface import Model
from slmkit.runtime.sampling import SamplingConfig
from slmkit.serve.engine import Done, Engine, Failed, Piece, QueueFull, Row, RowSampler
from slmkit.serve.grammar import Grammars
from slmkit.serve.protocol import ChatRequest, CompletionRequest, EmbeddingRequest, Sampling, error_body
from slmkit.serve.settings import ServeSettings

OPEN_PATHS = ("/health",)  # the only route without the key: a load balancer's probe
KEEPALIVE_S = 0.5  # an idle stream writes a comment this often: a client that left is noticed on the write


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, kind, param, code), headers


class Metrics:
    """The Prometheus metrics of one app (its own registry: two apps in one process do not mix counts)."""

    def __init__(self, engine: Engine | None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("slm_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=registry)
        self.prompt_tokens = Counter("slm_prompt_tokens", "Prompt tokens of accepted requests", registry=registry)
        self.generated_tokens = Counter("slm_generated_tokens", "Tokens generated", registry=registry)
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.first_token = Histogram("slm_time_to_first_token_seconds", "Request start to its first token",
                                     buckets=buckets, registry=registry)
        self.latency = Histogram("slm_request_latency_seconds", "Request start to its last token", buckets=buckets,
                                 registry=registry)
        queue_depth = Gauge("slm_queue_depth", "Rows waiting for a slot", registry=registry)
        busy = Gauge("slm_busy_slots", "Rows being decoded", registry=registry)
        queue_depth.set_function(lambda: engine.queued if engine else 0)
        busy.set_function(lambda: engine.busy if engine else 0)


def authorized(headers: dict[bytes, bytes], key: str) -> bool:
    """`Authorization: Bearer KEY`, or HTTP Basic with KEY as the password (what a browser sends for the page)."""
    value = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credential = value.partition(" ")
    if scheme.lower() == "basic":
        try:
            credential = base64.b64decode(credential, validate=True).decode().partition(":")[2]
        except ValueError:
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.encode(), key.encode())


class Guard:
    """The ASGI layer every request passes: the API key, and the request count by route and status."""

    def __init__(self, app, key: str | None, metrics: Metrics):
        self.app, self.key, self.metrics = app, key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in ROUTES else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        if self.key and path not in OPEN_PATHS and scope["method"] != "OPTIONS" \
                and not authorized(dict(scope["headers"]), self.key):
            body = json.dumps(error_body("a valid API key is required (Authorization: Bearer KEY)",
                                         "authentication_error", code="invalid_api_key")).encode()
            await counted({"type": "http.response.start", "status": 401,
                           "headers": [(b"content-type", b"application/json"),
                                       (b"www-authenticate", b'Basic realm="slm serve"')]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, counted)


ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
          "/openapi.json", "/docs")


def create_app(lm: Model, settings: ServeSettings):
    """The FastAPI app serving `lm`; its engine thread starts now and stops with the app."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.concurrency import run_in_threadpool

    generates = lm.kind in GENERATING_KINDS
    context = min(settings.ctx or lm.context, lm.context)
    engine = Engine(lm, slots=settings.max_concurrency, max_queue=settings.max_queue,
                    length=context) if generates else None
    ends = lm.stop_tokens() if generates else set()  # the same end-of-generation set for every row
    grammars = Grammars(lm.tokenizer, lm.config.vocab_size, ends) if generates else None
    metrics = Metrics(engine)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if engine is not None:
            engine.close()

    app = FastAPI(title="slm serve", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan,
                  description=f"OpenAI-compatible API for {settings.name}")
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SlmError)
    async def slm_error(request, exc: SlmError):
        return JSONResponse(error_body(str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        return JSONResponse(error_body(f"{where}: {error['msg']}", param=where), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {exc}", "server_error"), status_code=500)

    def check_model(name: str) -> None:
        if name != settings.name:
            raise ApiError(404, f"model {name!r} is not served here; this server serves {settings.name!r}",
                           "not_found_error", "model", "model_not_found")

    def check_generates(route: str) -> None:
        if not generates:
            raise ApiError(400, f"{settings.name} is an {lm.kind} model: it serves /v1/embeddings, not {route}")

    def envelope(answer_id: str, kind: str, choices: list, usage_slot: bool = False, **extra) -> dict:
        """An answer or a chunk of one; `usage_slot`: a chunk's `usage: null` (include_usage asks for it)."""
        return {"id": answer_id, "object": kind, "created": int(time.time()), "model": settings.name,
                "choices": choices, **({"usage": None} if usage_slot else {}), **extra}

    def rows_for_prompt(ids: list[int], body: Sampling, grammar, top_logprobs: int | None, emit, first: int):
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if not ids:
            raise ApiError(400, "the prompt has no tokens", param="prompt")
        if len(ids) >= context or (max_tokens and len(ids) + max_tokens > context):
            asked = f" and max_tokens {max_tokens}" if max_tokens else ""
            raise ApiError(400, f"the prompt has {len(ids)} tokens{asked}; the context holds {context} "
                           "tokens (prompt + answer)", param="messages" if hasattr(body, "messages") else "prompt",
                           code="context_length_exceeded")
        max_tokens = max_tokens or context - len(ids)
        rows = []
        for choice in range(body.n):
            seed = None if body.seed is None else (body.seed + choice) % 2**63
            sampling = SamplingConfig(body.temperature, body.top_p, body.top_k, body.min_p, body.repetition_penalty,
                                      seed, max_tokens)
            sampler = RowSampler(lm.tokenizer, sampling, ends, presence=body.presence_penalty,
                                 frequency=body.frequency_penalty, stops=body.stops(), grammar=grammar,
                                 top_logprobs=top_logprobs)
            rows.append(Row(ids, sampler, max_tokens, emit=lambda event, index=first + choice: emit(index, event)))
        return rows

    async def grammar_of(body) -> object:
        fmt = body.response_format
        if fmt is None or fmt.type == "text":
            return None
        if body.stop:
            raise ApiError(400, "stop cannot be combined with a JSON response_format (it would cut the JSON)",
                           param="stop")
        schema = fmt.json_schema.schema_ if fmt.json_schema else None
        return await run_in_threadpool(grammars.compile, fmt.type, schema, "response_format")

    async def run_rows(request: Request, make_rows, body: Sampling, prompt_tokens: int, shape: Shape, grammar):
        """Submit the rows, then stream chunks or return the whole answer."""
        chunk = shape.chunk

        def final(state: Collected, usage_chunk: bool = False) -> dict:
            usage = usage_of(prompt_tokens, state.tokens)
            if usage_chunk:
                return envelope(shape.answer_id, shape.chunk_kind, [], usage=usage)
            check_format(grammar, state)
            return envelope(shape.answer_id, shape.kind, [shape.choice(index, state) for index in
                                                          range(len(state.texts))], usage=usage)

        loop, events, start = asyncio.get_running_loop(), asyncio.Queue(), time.monotonic()

        def emit(index, event):
            loop.call_soon_threadsafe(events.put_nowait, (index, event))

        rows = make_rows(emit)
        try:
            engine.submit(rows)
        except QueueFull:
            raise ApiError(429, f"the queue is full ({settings.max_queue} rows wait); retry shortly",
                           "rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from None
        metrics.prompt_tokens.inc(prompt_tokens)
        deadline = start + settings.timeout if settings.timeout else None
        state = Collected(len(rows))

        def cancel_all():
            engine.withdraw(rows)

        async def next_event(idle: float):
            """The next row event; None when `idle` seconds pass without one. Raises when time runs out."""
            wait = idle if deadline is None else max(0.0, min(idle, deadline - time.monotonic()))
            try:
                return await asyncio.wait_for(events.get(), wait)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    cancel_all()
                    raise ApiError(504, f"the request ran past --timeout {settings.timeout:g} s and was stopped",
                                   "timeout_error", code="timeout") from None
                return None

        def account(index, event):
            if isinstance(event, Piece) and state.first_token is None:
                state.first_token = time.monotonic() - start
                metrics.first_token.observe(state.first_token)
            if isinstance(event, Failed):
                cancel_all()
                raise ApiError(event.status, event.message, "server_error")
            if isinstance(event, Done):
                state.done += 1
                state.tokens += event.tokens
                metrics.generated_tokens.inc(event.tokens)
                if state.done == len(rows):
                    metrics.latency.observe(time.monotonic() - start)

        if not body.stream:
            try:
                while state.done < len(rows):
                    item = await next_event(0.25)
                    if item is None:
                        if await request.is_disconnected():
                            cancel_all()
                            return Response(status_code=499)
                        continue
                    account(*item)
                    state.add(*item)
            finally:
                cancel_all()  # no-op for finished rows; frees the slots of a request that failed or left
            return final(state)

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            try:
                for index in range(len(rows)):
                    yield sse_line(chunk(index, None, include_usage, first=True))
                while state.done < len(rows):
                    try:
                        item = await next_event(KEEPALIVE_S)
                        if item is None:
                            yield ": keep-alive\n\n"
                            continue
                        account(*item)
                    except ApiError as exc:
                        yield sse_line(exc.body)
                        return
                    index, event = item
                    yield sse_line(chunk(index, event, include_usage))
                if include_usage:
                    yield sse_line(final(state, usage_chunk=True))
                yield "data: [DONE]\n\n"
            finally:
                cancel_all()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.name}

    @app.get("/metrics")
    async def metrics_route():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.name, "object": "model", "created": created,
                                            "owned_by": "slmkit", "context_length": context}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        check_model(body.model)
        check_generates("/v1/chat/completions")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        templated = applies_template(lm)
        ids = prompt_ids(lm.tokenizer, messages, templated)
        grammar = await grammar_of(body)
        top = (body.top_logprobs or 0) if body.logprobs else None
        answer_id = f"chatcmpl-{secrets.token_hex(12)}"

        def chunk(index, event, include_usage, first=False):
            delta = {"role": "assistant", "content": ""} if first else {}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            if isinstance(event, Piece):
                choice["delta"] = {"content": event.text}
                if top is not None:
                    choice["logprobs"] = {"content": chat_logprobs(event.logprobs)}
            elif isinstance(event, Done):
                choice["finish_reason"] = event.finish_reason
            return envelope(answer_id, "chat.completion.chunk", [choice], include_usage)

        def choice(index, state):
            return {"index": index, "message": {"role": "assistant", "content": state.texts[index]},
                    "logprobs": {"content": chat_logprobs(state.logprobs[index])} if top is not None else None,
                    "finish_reason": state.reasons[index]}

        shape = Shape(answer_id, "chat.completion", "chat.completion.chunk", chunk, choice)
        return await run_rows(request, lambda emit: rows_for_prompt(ids, body, grammar, top, emit, 0), body,
                              len(ids), shape, grammar)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        check_generates("/v1/completions")
        prompts = [text_ids(lm.tokenizer, text) for text in body.prompt]
        grammar = await grammar_of(body)
        top = body.logprobs
        answer_id = f"cmpl-{secrets.token_hex(12)}"

        def chunk(index, event, include_usage, first=False):
            if first:
                return None
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": None}
            if isinstance(event, Piece):
                choice["text"] = event.text
                if top is not None:
                    choice["logprobs"] = completion_logprobs(event.logprobs)
            elif isinstance(event, Done):
                choice["finish_reason"] = event.finish_reason
            return envelope(answer_id, "text_completion", [choice], include_usage)

        def choice(index, state):
            return {"index": index, "text": state.texts[index], "finish_reason": state.reasons[index],
                    "logprobs": completion_logprobs(state.logprobs[index]) if top is not None else None}

        def make_rows(emit):
            return [row for number, ids in enumerate(prompts)
                    for row in rows_for_prompt(ids, body, grammar, top, emit, number * body.n)]

        shape = Shape(answer_id, "text_completion", "text_completion", chunk, choice)
        return await run_rows(request, make_rows, body, sum(map(len, prompts)), shape, grammar)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        check_model(body.model)
        texts = body.input
        counts = [len(text_ids(lm.tokenizer, text)) for text in texts]  # as the runtime embeds them
        for number, count in enumerate(counts):
            if count == 0:
                raise ApiError(400, f"input[{number}] has no tokens", param="input")
            if count > context:  # the same limit as a prompt's (--ctx, or the model's): never cut
                raise ApiError(400, f"input[{number}] has {count} tokens; the context holds {context} tokens",
                               param="input", code="context_length_exceeded")
        vectors = await run_in_threadpool(embed_locked, lm, texts)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)  # unit length, as OpenAI's embeddings are
        data = []
        for index, vector in enumerate(vectors):
            values = vector.numpy().astype(np.float32)
            encoded = (base64.b64encode(values.tobytes()).decode() if body.encoding_format == "base64"
                       else values.tolist())
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        metrics.prompt_tokens.inc(sum(counts))
        return {"object": "list", "data": data, "model": settings.name,
                "usage": {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(files("slmkit.serve").joinpath("page.html").read_text())

    app.add_middleware(Guard, key=settings.api_key, metrics=metrics)
    if settings.cors_origins:  # outermost: a preflight is answered before the key is asked for
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    return app


@dataclass
class Shape:
    """How one endpoint words its answers: ids and object names, a streamed chunk, a whole answer's choice."""

    answer_id: str
    kind: str
    chunk_kind: str
    chunk: Callable  # (index, event, include_usage, first) -> chunk dict or None
    choice: Callable  # (index, Collected) -> choice dict


class Collected:
    """The rows' answers as their events arrive."""

    def __init__(self, rows: int):
        self.texts, self.reasons = [""] * rows, [None] * rows
        self.logprobs: list[list[dict]] = [[] for _ in range(rows)]
        self.done = self.tokens = 0
        self.first_token: float | None = None

    def add(self, index: int, event) -> None:
        if isinstance(event, Piece):
            self.texts[index] += event.text
            self.logprobs[index] += event.logprobs
        elif isinstance(event, Done):
            self.reasons[index] = event.finish_reason


EMBEDDING = threading.Lock()  # one embedding batch at a time: a worker thread each would only fight over the cores


def embed_locked(lm: Model, texts: list[str]) -> torch.Tensor:
    with EMBEDDING:
        return lm.embed(texts)


def check_format(grammar, state: Collected) -> None:
    """A constrained answer that ended by itself must satisfy its format (one cut by max_tokens cannot)."""
    if grammar is None:
        return
    for text, reason in zip(state.texts, state.reasons):
        problem = grammar.problem(text) if reason == "stop" else None
        if problem:
            raise ApiError(500, f"constrained output failed validation: {problem}", "server_error")


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(entries: list[dict]) -> list[dict]:
    def one(token, logprob):
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return [{**one(entry["token"], entry["logprob"]), "top_logprobs": [one(*pair) for pair in entry["top"]]}
            for entry in entries]


def completion_logprobs(entries: list[dict]) -> dict:
    offsets, at = [], 0
    for entry in entries:
        offsets.append(at)
        at += len(entry["token"])
    return {"tokens": [entry["token"] for entry in entries], "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": [dict(entry["top"]) for entry in entries], "text_offset": offsets}


def sse_line(payload: dict | None) -> str:
    return "" if payload is None else f"data: {json.dumps(payload)}\n\n"
