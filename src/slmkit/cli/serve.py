"""`slm serve MODEL`: the OpenAI-compatible local server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from slmkit.cli.common import (AllowPickleOpt, BackendOpt, DeviceOpt, DtypeOpt, ModelArg, TrustRemoteCodeOpt,
                               WeightsOpt, load_model, stderr)
from slmkit.models.catalog import DEFAULT_MODEL


def serve_command(
    model: ModelArg = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="SLM_API_KEY", show_envvar=True,
                                                help="Require this key on every route but /health.")] = None,
    max_concurrency: Annotated[int, typer.Option(help="Rows decoded together (requests x n).")] = 8,
    max_queue: Annotated[int, typer.Option(help="Rows that may wait for a slot; more get 429.")] = 64,
    ctx: Annotated[int | None, typer.Option(help="Tokens per request, prompt + answer [default: the model's "
                                                 "context, at most 4096 on llama.cpp].")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds a request may take, queue included.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allow browser pages from this origin "
                                                               "(repeatable); none by default.")] = None,
    backend: BackendOpt = "auto", device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    weights: WeightsOpt = "float32",
    allow_pickle: AllowPickleOpt = False, trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Serve a model with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models),
    /metrics, /health and a chat page at /.

    Examples:
      slm serve                                   # the default model on http://127.0.0.1:8000
      slm serve runs/edge-chat/model.q4_0.gguf --max-concurrency 4
      SLM_API_KEY=secret slm serve ./my-model --host 0.0.0.0 --timeout 120
    """
    import slmkit
    from slmkit.runtime import choose_backend
    from slmkit.serve import ServeSettings
    from slmkit.serve.server import bind

    local = Path(model).expanduser()
    name = Path(os.path.abspath(local)).name if local.exists() else model  # abspath: `slm serve .` names the dir
    # The settings and bind() check every value, so a bad flag is refused before the port or the model is taken.
    settings = ServeSettings(name=name, api_key=api_key, max_concurrency=max_concurrency, max_queue=max_queue,
                             ctx=ctx, timeout=timeout, cors_origins=list(cors_origin or []))
    sock = bind(host, port)
    extra = {"n_ctx": ctx} if choose_backend(model, backend) == "llamacpp" else {}  # llama.cpp sizes it on open
    lm = load_model(model, backend=backend, device=device, dtype=dtype, weights=weights, allow_pickle=allow_pickle,
                    trust_remote_code=trust_remote_code, **extra)

    def ready(url: str) -> None:
        stderr.print(f"serving {name} ({lm.backend}) on {url}: OpenAI API at {url}/v1, chat page at {url}/"
                     + (" (key required)" if api_key else ""), highlight=False, soft_wrap=True)

    try:
        slmkit.serve(lm, settings, listening=sock, on_ready=ready)
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised Ctrl-C: the way a server is stopped
        pass
    stderr.print("stopped", highlight=False)
