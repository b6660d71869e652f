"""`slm serve`: an OpenAI-compatible local server (FastAPI + uvicorn) over any model the runtime opens."""

from slmkit.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
