"""slmkit: make language models small, make them yours, prove it, run them locally.

The Python API mirrors the `slm` CLI verb for verb. Its names are imported on
first use, so `import slmkit` (and every `slm` command) starts without torch.
"""

from importlib import import_module

from slmkit.errors import SlmError

__version__ = "0.1.0"

_LAZY = {"prune": "slmkit.compress", "quantize": "slmkit.compress", "evaluate": "slmkit.evaluate",
         "LoadedModel": "slmkit.models", "load": "slmkit.models", "save": "slmkit.models"}

__all__ = ["LoadedModel", "SlmError", "evaluate", "load", "prune", "quantize", "save", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmkit' has no attribute {name!r}")
