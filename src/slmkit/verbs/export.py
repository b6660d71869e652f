"""`export`: a model as files another runtime runs: a GGUF file (llama.cpp, Ollama, LM Studio; an Ollama Modelfile
beside it), an ONNX directory (onnxruntime), a web folder whose page runs the model in the browser, or an
ExecuTorch directory for phones. ExportSettings (slmkit.exporters.config) is `slm export`'s options,
the export recipe stage's fields and, as the config it names, what `slmkit.export` takes."""

from __future__ import annotations

from pathlib import Path

import slmkit
from slmkit.exporters.config import ExecuTorchConfig, ExportSettings, OnnxConfig, WebConfig
from slmkit.models.loading import is_onnx, local_path
from slmkit.results import StageResult
from slmkit.verbs.registry import ProgressFactory, Verb, register
from slmkit.verbs.opening import open_float32


def run(settings: ExportSettings, model: str, out: Path, *, progress: ProgressFactory, force: bool = False,
        data: str | Path | None = None) -> StageResult:
    """Write `model` to `out`: the .gguf file (its Modelfile beside it), the ONNX directory, or the web folder (of a
    .gguf file or an ONNX directory as they are, else of the model). `data`: unused (an export reads no text)."""
    target = settings.export_config()
    reads = [local_path(model)]
    # Checks before the slow load. The exporters import torch: imported here, out of CLI start-up.
    if isinstance(target, WebConfig):
        from slmkit.exporters.web import check_web_target

        check_web_target(out, force, reads=reads)
        if str(model).endswith(".gguf") or is_onnx(model):  # a finished artefact: its weights as they are
            return slmkit.export(model, out, target, force=force)
    elif isinstance(target, ExecuTorchConfig):
        from slmkit.exporters.executorch import check_executorch_target

        check_executorch_target(out, force, reads=reads)
    elif isinstance(target, OnnxConfig):
        from slmkit.exporters.onnx import check_onnx_target

        check_onnx_target(out, force, reads=reads)
    else:
        from slmkit.exporters.gguf import check_target

        check_target(out, target.quant, force, reads=reads, checkpoint=reads[0])
    lm = open_float32(settings, model, progress)
    return slmkit.export(lm, out, target, force=force)


VERB = register(Verb("export", ExportSettings, run))
