"""slmkit: make language models small, make them yours, prove it, run them locally.

The Python API mirrors the `slm` CLI verb for verb. Its names are imported on
first use, so `import slmkit` (and every `slm` command) starts without torch.
"""

from importlib import import_module

from slmkit.errors import SlmError
from slmkit.results import FinetuneResult, StageResult

__version__ = "0.1.0"

_VERBS = ("load", "save", "prune", "quantize", "export", "evaluate", "bench", "generate", "serve", "finetune", "synth",
          "student", "distill")
_CONFIGS = {"Calibration": "slmkit.compress.calibration", "CompressResult": "slmkit.api",
            "GGUFConfig": "slmkit.exporters.config", "OnnxConfig": "slmkit.exporters.config",
            "WebConfig": "slmkit.exporters.config", "ExecuTorchConfig": "slmkit.exporters.config",
            "EvalConfig": "slmkit.evaluation.config", "BenchConfig": "slmkit.evaluation.config",
            "SamplingConfig": "slmkit.sampling", "MagnitudeConfig": "slmkit.compress", "WandaConfig": "slmkit.compress",
            "SparseGPTConfig": "slmkit.compress", "RTNConfig": "slmkit.compress", "GPTQConfig": "slmkit.compress",
            "AWQConfig": "slmkit.compress", "QATConfig": "slmkit.distillation.qat",
            "GGUFPlanConfig": "slmkit.compress.gguf_quantize", "PlanQATConfig": "slmkit.distillation.plan_qat",
            "StructuredConfig": "slmkit.compress.structured",
            "LoadedModel": "slmkit.models", "FinetuneConfig": "slmkit.finetuning",
            "SynthConfig": "slmkit.synthesis", "FilterConfig": "slmkit.synthesis",
            "StudentConfig": "slmkit.distillation", "DistillConfig": "slmkit.distillation"}
_LAZY = {**{verb: "slmkit.api" for verb in _VERBS}, **_CONFIGS}

__all__ = ["FinetuneResult", "SlmError", "StageResult", "__version__", *_VERBS, *_CONFIGS]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmkit' has no attribute {name!r}")
