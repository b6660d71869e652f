"""Run models locally: one model interface over torch, llama.cpp and onnxruntime; generation, chat."""

from slmkit.runtime.chat import ChatSession, repl
from slmkit.runtime.generate import generate
from slmkit.runtime.interface import Model, OpenOptions, RuntimeInfo
from slmkit.runtime.open import as_runtime, choose_backend, open_model
from slmkit.runtime.sampling import SamplingConfig

__all__ = ["ChatSession", "Model", "OpenOptions", "RuntimeInfo", "SamplingConfig", "as_runtime", "choose_backend",
           "generate", "open_model", "repl"]
