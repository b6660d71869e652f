"""Run models locally: generation, chat."""

from slmkit.runtime.chat import ChatSession, repl
from slmkit.runtime.generate import SamplingConfig, generate

__all__ = ["ChatSession", "SamplingConfig", "generate", "repl"]
