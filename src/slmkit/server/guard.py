"""The ASGI layer around the whole app, and the metrics it counts into.

The API key is checked here rather than by a route dependency, so no route (the OpenAPI document, the page,
/metrics) can be left out of the key by accident; only /health is open.
"""

from __future__ import annotations

import base64
import hmac
import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from slmkit.server.engine import Engine
from slmkit.server.protocol import error_body

OPEN_PATHS = ("/health",)  # the only route without the key: a load balancer's probe
# The paths counted by name; anything else is counted as "other" (a scanner's paths would grow the label set).
ROUTES = ("/", "/chat.css", "/chat.js", "/health", "/metrics", "/v1/models", "/v1/chat/completions",
          "/v1/completions", "/v1/embeddings", "/openapi.json", "/docs")


class Metrics:
    """The Prometheus metrics of one app (its own registry: two apps in one process do not mix counts)."""

    def __init__(self, engine: Engine | None):
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
