"""`open_model(spec, ...)`: the one way to get a runnable model, whichever runtime runs it."""

from __future__ import annotations

# Importing a runtime registers it; `auto` tries them in this order.
import slmkit.runtime.onnx  # noqa: F401  (an ONNX export: nothing else reads it)
import slmkit.runtime.executorch  # noqa: F401  (an ExecuTorch export: nothing else reads it)
import slmkit.runtime.llamacpp  # noqa: F401  (a .gguf file, when llama-cpp-python is installed)
import slmkit.runtime.torch_backend  # noqa: F401  (everything else)
from slmkit.errors import SlmError
from slmkit.models.loading import LoadedModel, web_folder_model
from slmkit.runtime.interface import BACKENDS, Model, OpenOptions
from slmkit.runtime.torch_backend import TorchModel


def choose_backend(spec: str, backend: str = "auto") -> str:
    """The runtime that runs `spec`: `backend` itself when it can, or the first whose files `spec` is for."""
    if backend != "auto" and backend not in BACKENDS:
        raise SlmError(f"unknown --backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    spec = web_folder_model(spec)
    if backend == "auto":
        return next(name for name, runtime in BACKENDS.items() if runtime.preferred(spec))
    if not BACKENDS[backend].handles(spec):
        raise SlmError(BACKENDS[backend].refusal.format(spec=spec))
    return backend


def open_model(spec: str, *, backend: str = "auto", **options) -> Model:
    """A model ready to run: scoring, generation, embeddings, bench steps (`runtime.interface.Model`).

    `backend`: auto | torch | llamacpp | onnx | executorch; auto runs a .gguf file with llama.cpp when llama-cpp-python
    is installed, an ONNX export with onnxruntime and everything else with torch; a web export runs the model its
    page runs. `options`: the fields of
    `runtime.interface.OpenOptions` (device, dtype, weights, compile_decode, n_ctx, logits_all, kind, ...).
    Example: `lm = open_model("smollm2-135m-instruct", weights="int8"); lm.info()`.
    """
    spec = web_folder_model(spec)
    return BACKENDS[choose_backend(spec, backend)].open(spec, OpenOptions(**options))


def as_runtime(lm) -> Model:
    """A model the runtime operations work on: a LoadedModel from `slmkit.models.load` gets them (torch)."""
    if isinstance(lm, Model):
        return lm
    if isinstance(lm, LoadedModel):
        return TorchModel.wrap(lm)
    raise SlmError(f"expected a model from slmkit.load or slmkit.runtime.open_model, got {type(lm).__name__}")
