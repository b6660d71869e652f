"""How `slm serve` runs, declared once (slmkit.schema): `ApiSettings` are what the server does with requests,
`ServeSettings` adds the model's name and is what `create_app` and `slmkit.serve` take, and `ServeConfig` is the
verb's config, whose fields are `slm serve`'s options. The settings refuse a bad value themselves, so `slm serve`,
a library caller and `create_app` meet one validation site and the same one-line errors, named by the CLI flag.
The host and the port are checked where they are used, by `serve.server.bind`."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from slmkit.errors import SlmError
from slmkit.schema import setting
from slmkit.settings import OpenSettings, RuntimeSettings

# An origin as a browser sends it in the Origin header: lowercase scheme and host, an optional port, no path.
# CORSMiddleware compares origins as exact strings, so anything else (a trailing slash, capitals, a wildcard
# host) would be accepted and then never match a request.
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s*A-Z]+")


# Frozen: a value changed after the checks would skip them. kw_only: `ServeSettings("tiny")` still takes the name
# positionally.
@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """Who may call the API, how many rows it decodes at once, and how long a request may take."""

    api_key: str | None = setting("Require this key on every route but /health.", None, envvar="SLM_API_KEY")
    max_concurrency: int = setting("Rows decoded together (requests x n).", 8)
    max_queue: int = setting("Rows that may wait for a slot; more get 429.", 64)
    ctx: int | None = setting("Tokens per request, prompt + answer [default: the model's context, at most 4096 on "
                              "llama.cpp].", None)
    timeout: float | None = setting("Seconds a request may take, queue included.", None)
    # Kept as a tuple: a list could still be changed after the checks. (Annotated as a list: Typer's repeatable.)
    cors_origins: list[str] = setting("Allow browser pages from this origin (repeatable); none by default.", (),
                                      flag="--cors-origin")

    def __post_init__(self) -> None:
        self._check_api_key()
        whole_number("--max-concurrency", self.max_concurrency)
        if self.max_concurrency < 1:
            raise SlmError(f"--max-concurrency must be >= 1, got {self.max_concurrency}")
        whole_number("--max-queue", self.max_queue)
        if self.max_queue < 1:
            raise SlmError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.ctx is not None:
            whole_number("--ctx", self.ctx)
            if self.ctx < 16:
                raise SlmError(f"--ctx must be >= 16, got {self.ctx}")
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise SlmError(f"--timeout must be a number of seconds, got {type(self.timeout).__name__} "
                               f"{self.timeout!r}")
            if not self.timeout > 0:  # `not >` also refuses NaN
                raise SlmError(f"--timeout must be > 0 seconds, got {self.timeout}")
        self._check_cors_origins()

    def _check_api_key(self) -> None:
        key = self.api_key
        if key is None:
            return
        if not isinstance(key, str):  # the key itself is never echoed: error lines end up in logs
            raise SlmError(f"--api-key must be a string, got {type(key).__name__}")
        if not key.strip():  # an empty key would turn the check off, not on
            raise SlmError("--api-key is empty")
        if key != key.strip() or not key.isprintable():  # HTTP strips a header's edges and refuses control bytes
            raise SlmError("--api-key has a space, tab or newline at an end or a control character inside; an HTTP "
                           "header cannot carry it, so remove it (a key read from a file keeps its newline)")

    def _check_cors_origins(self) -> None:
        # A bare string would pass CORSMiddleware's `origin in allow_origins` as a substring test.
        if not isinstance(self.cors_origins, list | tuple):
            raise SlmError(f"--cors-origin takes a list of origins, got {type(self.cors_origins).__name__} "
                           f"{self.cors_origins!r}")
        for origin in self.cors_origins:
            if origin != "*" and not (isinstance(origin, str) and ORIGIN.fullmatch(origin)):
                raise SlmError(f"--cors-origin must be * or scheme://host[:port] as a browser sends it (lowercase, "
                               f"no path), e.g. http://localhost:3000; got {origin!r}")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))  # how a frozen dataclass sets a field


@dataclass(frozen=True)
class ServeSettings(ApiSettings):
    """How a server answers, for `create_app` and `slmkit.serve`. Example: `ServeSettings("smollm2",
    api_key="secret", timeout=120)`."""

    # `slm serve` names the model after the path it was given, so this is no option of its own.
    name: str = setting("The model id clients send.", cli=False, recipe=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SlmError(f"name (the model id clients send) must be a non-empty string, got {self.name!r}")
        super().__post_init__()


# Frozen: a frozen base (ApiSettings) needs a frozen class; the model-opening groups only add fields.
@dataclass(frozen=True, kw_only=True)
class ServeConfig(ApiSettings, RuntimeSettings, OpenSettings):
    """`slm serve`'s settings: where it listens (bound by `serve.server.bind` before the model loads), how the
    API answers (`ApiSettings`), and how the model is opened and run."""

    host: str = setting("Address to listen on; 0.0.0.0 opens it to the network.", "127.0.0.1")
    port: int = setting("TCP port (0: any free one).", 8000)

    def serve_settings(self, name: str) -> ServeSettings:
        """The server's settings for the model clients know as `name`."""
        return ServeSettings(name, **{field.name: getattr(self, field.name) for field in fields(ApiSettings)})


def whole_number(flag: str, value) -> None:
    """Refuses anything but an int (a bool too: True would pass as 1, 2.5 slots would break the engine)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SlmError(f"{flag} must be a whole number, got {type(value).__name__} {value!r}")
