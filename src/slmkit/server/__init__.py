"""`slm serve`: an OpenAI-compatible local server (FastAPI + uvicorn) over any model the runtime opens."""

from slmkit.server.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    """The app imports FastAPI and torch: only when it is built, not when `slm serve` reads its config to make its
    options (`slm --help` stays instant)."""
    if name == "create_app":
        from slmkit.server.app import create_app

        return create_app
    raise AttributeError(f"module 'slmkit.server' has no attribute {name!r}")
