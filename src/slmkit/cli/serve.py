"""`slm serve MODEL`: the OpenAI-compatible local server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

import slmkit
from slmkit.cli.common import ModelArg, load_model, stderr
from slmkit.cli.options import with_config
from slmkit.models.catalog import DEFAULT_MODEL
from slmkit.server.server import bind, serve_forever, url_of
from slmkit.server.settings import ServeConfig


@with_config(ServeConfig)
def serve_command(
    config: ServeConfig, model: ModelArg = DEFAULT_MODEL,
    static: Annotated[Path | None, typer.Option(
        "--static", help="Serve a folder from `slm export --format web` (its page runs the model in the browser) "
                         "instead of a model: its files with the headers that give its WebAssembly threads.")] = None,
) -> None:
    """Serve a model with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models),
    /metrics, /health and a chat page at /; or, with --static, a web export's page.

    Examples:
      slm serve                                   # the default model on http://127.0.0.1:8000
      slm serve runs/edge-chat/model.q4_0.gguf --max-concurrency 4
      SLM_API_KEY=secret slm serve ./my-model --host 0.0.0.0 --timeout 120
      slm export --format web --quant q4_0 --out smollm2-web && slm serve --static smollm2-web
    """
    if static is not None:
        from slmkit.server.static import static_app

        app = static_app(static)  # a bad folder is refused before the port is taken
        sock = bind(config.host, config.port)
        stderr.print(f"serving {static} on {url_of(sock)}/ (the page runs the model in the browser)",
                     highlight=False, soft_wrap=True)
        until_stopped(lambda: serve_forever(app, sock))
        return
    from slmkit.runtime import choose_backend  # torch: kept out of CLI start-up

    local = Path(model).expanduser()
    name = Path(os.path.abspath(local)).name if local.exists() else model  # abspath: `slm serve .` names the dir
    # The config (checked as the flags were read), the settings and bind() check every value, so a bad flag is
    # refused before the port or the model is taken.
    settings = config.serve_settings(name)
    sock = bind(config.host, config.port)
    # llama.cpp sizes its context when the model is opened.
    extra = {"n_ctx": config.ctx} if choose_backend(model, config.backend) == "llamacpp" else {}
    lm = load_model(model, **config.runtime_options(), **config.open_options(), **extra)

    def ready(url: str) -> None:
        stderr.print(f"serving {name} ({lm.backend}) on {url}: OpenAI API at {url}/v1, chat page at {url}/"
                     + (" (key required)" if config.api_key else ""), highlight=False, soft_wrap=True)

    until_stopped(lambda: slmkit.serve(lm, settings, listening=sock, on_ready=ready))


def until_stopped(serve) -> None:
    """Run a server until Ctrl-C, then say it stopped."""
    try:
        serve()
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised Ctrl-C: the way a server is stopped
        pass
    stderr.print("stopped", highlight=False)
