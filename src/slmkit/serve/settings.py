"""`ServeSettings`: how `slm serve` runs. The settings refuse a bad value themselves, so `slm serve`, a library
caller of `slmkit.serve` and `create_app` meet one validation site and the same one-line errors, named by the
CLI flag. The host and the port are checked where they are used, by `serve.server.bind`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from slmkit.errors import SlmError

# An origin as a browser sends it in the Origin header: lowercase scheme and host, an optional port, no path.
# CORSMiddleware compares origins as exact strings, so anything else (a trailing slash, capitals, a wildcard
# host) would be accepted and then never match a request.
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s*A-Z]+")


@dataclass(frozen=True)  # frozen: a value changed after the checks would skip them
class ServeSettings:
    """How `slm serve` runs (the CLI flags). Example: `ServeSettings("smollm2", api_key="secret", timeout=120)`."""

    name: str  # the model id clients send
    api_key: str | None = None  # required on every route but /health
    max_concurrency: int = 8  # rows decoded together (requests x n)
    max_queue: int = 64  # rows that may wait for a slot; more get 429
    ctx: int | None = None  # tokens per request (prompt + answer); default: the model's context
    timeout: float | None = None  # seconds a request may take, queue included
    cors_origins: list[str] = field(default_factory=list)  # browser pages allowed to call the API

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SlmError(f"name (the model id clients send) must be a non-empty string, got {self.name!r}")
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


def whole_number(flag: str, value) -> None:
    """Refuses anything but an int (a bool too: True would pass as 1, 2.5 slots would break the engine)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SlmError(f"{flag} must be a whole number, got {type(value).__name__} {value!r}")
