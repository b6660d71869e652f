"""slmkit: make language models small, make them yours, prove it, run them locally.

The Python API mirrors the `slm` CLI verb for verb. Its names are imported on
first use, so `import slmkit` (and every `slm` command) starts without torch.
"""

import sys
import types
from importlib import import_module

from slmkit.errors import SlmError

__version__ = "0.1.0"

_VERBS = ("load", "save", "prune", "quantize", "export", "evaluate", "bench", "generate", "serve", "finetune", "synth",
          "student", "distill")
_CONFIGS = {"Calibration": "slmkit.compress.calibration", "CompressResult": "slmkit.api", "GGUFConfig": "slmkit.export.config",
            "OnnxConfig": "slmkit.export.config", "EvalConfig": "slmkit.evaluate.config",
            "BenchConfig": "slmkit.evaluate.config",
            "SamplingConfig": "slmkit.sampling", "MagnitudeConfig": "slmkit.compress", "WandaConfig": "slmkit.compress",
            "SparseGPTConfig": "slmkit.compress", "RTNConfig": "slmkit.compress", "GPTQConfig": "slmkit.compress",
            "AWQConfig": "slmkit.compress", "QATConfig": "slmkit.distill.qat",
            "StructuredConfig": "slmkit.compress.structured",
            "LoadedModel": "slmkit.models", "FinetuneConfig": "slmkit.finetune",
            "SynthConfig": "slmkit.synth", "FilterConfig": "slmkit.synth",
            "StudentConfig": "slmkit.distill", "DistillConfig": "slmkit.distill"}
_LAZY = {**{verb: "slmkit.api" for verb in _VERBS}, **_CONFIGS}

__all__ = ["SlmError", "__version__", *_VERBS, *_CONFIGS]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmkit' has no attribute {name!r}")


class _Package(types.ModuleType):
    """`slmkit.export`, `slmkit.evaluate` and `slmkit.serve` are verbs and also the names of subpackages; importing a
    subpackage would set its module as the package's attribute and hide the verb. The verb keeps the name
    (the subpackages stay importable by their full names: `from slmkit.export import export_gguf`; only
    `import slmkit.export as name` gives the verb, so use the from-import form for the subpackages)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _VERBS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
