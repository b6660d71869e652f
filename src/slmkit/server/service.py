"""The server's own routes: /health, /metrics, /v1/models and the chat page at /. Each reads the app's state
(`create_app` sets it) through `request.app.state`."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    return {"status": "ok", "model": request.app.state.settings.name}


@router.get("/metrics")
async def metrics_route(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(request: Request):
    state = request.app.state
    return {"object": "list", "data": [{"id": state.settings.name, "object": "model", "created": state.created,
                                        "owned_by": "slmkit", "context_length": state.context}]}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse(files("slmkit.server").joinpath("page.html").read_text())


@router.get("/chat.css", include_in_schema=False)
async def page_style():
    return Response(files("slmkit.server").joinpath("chat.css").read_text(), media_type="text/css")


@router.get("/chat.js", include_in_schema=False)
async def page_script():
    return Response(files("slmkit.server").joinpath("chat.js").read_text(), media_type="text/javascript")
