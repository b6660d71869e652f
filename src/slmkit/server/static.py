"""Serving a folder from `slm export --format web`: its files as they are, with the headers its page needs.

Cross-origin isolation (COOP same-origin + COEP require-corp) is what lets the page's WebAssembly use threads
(SharedArrayBuffer); `no-cache` makes the browser ask again for a file, so its service worker sees a new export.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmError

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff",
                     "Cache-Control": "no-cache"}


def check_static_folder(folder: str | Path) -> Path:
    """A folder holding a page, or one line saying what is wrong."""
    from slmkit.exporters.web import MANIFEST_FILE

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise SlmError(f"--static {folder}: no such directory")
    if not (path / "index.html").is_file():
        raise SlmError(f"--static {folder}: no index.html in it; `slm export MODEL --format web --out DIR` writes one")
    if not (path / MANIFEST_FILE).is_file():
        raise SlmError(f"--static {folder}: no {MANIFEST_FILE}: not a folder from `slm export --format web`")
    return path


def static_app(folder: str | Path):
    """The ASGI app serving `folder` (index.html at /), every response with ISOLATION_HEADERS."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles

    path = check_static_folder(folder)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def isolate(request, call_next):
        response = await call_next(request)
        response.headers.update(ISOLATION_HEADERS)
        return response

    app.mount("/", StaticFiles(directory=path, html=True), name="static")
    return app
