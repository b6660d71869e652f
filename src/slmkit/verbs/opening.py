"""Opening the model a verb works on, under a progress line that says which runtime opens it."""

from __future__ import annotations

from slmkit.logs import quiet_libraries
from slmkit.verbs.registry import ProgressFactory

HOW = {"llamacpp": " with llama.cpp", "onnx": " with onnxruntime"}
CONVERTED = " (a packaged GGUF is converted once, then cached)"  # what torch does with a packaged GGUF


def open_runtime(spec: str, progress: ProgressFactory, *, backend: str, **options):
    """`runtime.open_model(spec, backend=backend, **options)` with a `loading SPEC ...` line; `backend` is chosen
    first, so an unknown one or a file it cannot run is refused before the slow load. The libraries it loads with
    are quietened first: a verb prints its one result, not their bars and warnings."""
    from slmkit.runtime import choose_backend, open_model  # torch: kept out of CLI start-up

    quiet_libraries()
    chosen = choose_backend(spec, backend)
    with progress(f"loading {spec}{HOW.get(chosen, CONVERTED)}"):
        return open_model(spec, backend=chosen, **options)


def open_float32(settings, model: str, progress: ProgressFactory):
    """`model` with torch in float32 on the CPU: what compression rewrites and the exporters read (a GPU, where
    used, computes a block at a time); `settings`: the open group (slmkit.settings.OpenSettings)."""
    return open_runtime(model, progress, backend="torch", device="cpu", dtype="float32", **settings.open_options())
