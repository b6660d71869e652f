"""`slm serve`: the OpenAI-compatible HTTP API on FastAPI, over one opened model and its decoding `Engine`.

Requests are validated by pydantic (`serve.protocol`) and every refusal is OpenAI's error JSON with a 4xx
status: a bad parameter 400, a missing key 401, an unknown model 404, a full queue 429 with Retry-After. The
routes live in two routers (`serve.inference`: the model's work; `serve.service`: health, metrics, the model
list, the page) and read one app's state from `request.app.state`, so two apps in one process stay apart. The
API key and the metrics are a plain ASGI layer around the whole app (`serve.guard`).
"""

from __future__ import annotations

import contextlib
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from slmkit.errors import SlmError
from slmkit.runtime.generate import GENERATING_KINDS
from slmkit.runtime.interface import Model
from slmkit.server import inference, service
from slmkit.server.engine import Engine
from slmkit.server.grammar import Grammars
from slmkit.server.guard import Guard, Metrics
from slmkit.server.protocol import ApiError, error_body
from slmkit.server.settings import ServeSettings


def create_app(lm: Model, settings: ServeSettings) -> FastAPI:
    """The FastAPI app serving `lm`; its engine thread starts now and stops with the app."""
    generates = lm.kind in GENERATING_KINDS
    context = min(settings.ctx or lm.context, lm.context)
    engine = Engine(lm, slots=settings.max_concurrency, max_queue=settings.max_queue,
                    length=context) if generates else None
    app = FastAPI(title="slm serve", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan,
                  description=f"OpenAI-compatible API for {settings.name}")
    state = app.state  # what the routes read; an encoder model has no engine, ends or grammars
    state.lm, state.settings, state.context, state.engine = lm, settings, context, engine
    state.ends = lm.stop_tokens() if generates else set()  # the same end-of-generation set for every row
    state.grammars = Grammars(lm.tokenizer, lm.config.vocab_size, state.ends) if generates else None
    state.metrics = Metrics(engine)
    state.created = int(time.time())
    for kind, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.include_router(service.router)
    app.include_router(inference.router)
    app.add_middleware(Guard, key=settings.api_key, metrics=state.metrics)
    if settings.cors_origins:  # outermost: a preflight is answered before the key is asked for
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    if app.state.engine is not None:
        app.state.engine.close()


async def api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def slm_error(request: Request, exc: SlmError):
    return JSONResponse(error_body(str(exc)), status_code=400)


async def invalid(request: Request, exc: RequestValidationError):
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    return JSONResponse(error_body(f"{where}: {error['msg']}", param=where), status_code=400)


async def http_error(request: Request, exc: HTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code, headers=exc.headers)


async def crashed(request: Request, exc: Exception):
    return JSONResponse(error_body(f"internal error: {exc}", "server_error"), status_code=500)


# Every refusal as OpenAI's error JSON: FastAPI's own (validation, 404, 405) and a crash too.
ERROR_HANDLERS = {ApiError: api_error, SlmError: slm_error, RequestValidationError: invalid,
                  HTTPException: http_error, Exception: crashed}
