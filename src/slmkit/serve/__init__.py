"""`slm serve`: an OpenAI-compatible local server (FastAPI + uvicorn) over any model the runtime opens."""

from slmkit.serve.app import create_app
from slmkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
