"""The `export` stage: a GGUF file (with its Ollama Modelfile), an ONNX directory, or a web folder (the stages after
it measure the model its page runs, natively)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.exporters.config import ExecuTorchConfig, GGUFConfig, OnnxConfig, WebConfig
from slmkit.models.checkpoint import atomic_directory
from slmkit.models.loading import local_path
from slmkit.pipeline.registry import StageContext, StageKind, verb_stage
from slmkit.results import StageResult
from slmkit.verbs import export
from slmkit.verbs.export import ExportSettings


# A run directory made before GGUF plans stored quant f16 written out; the stage keeps that default so it resumes.
STORED_QUANT = "f16"


class ExportStage(verb_stage(export.VERB, written_out=True, own_defaults={"quant": STORED_QUANT})):
    """ExportSettings' recipe settings."""

    def settings(self) -> ExportSettings:
        # The recipe's own words for the one-line error (its keys are no flags).
        if self.format == "onnx" and self.quant not in (None, STORED_QUANT):
            raise SlmError("quant applies to format gguf; an ONNX export keeps float32 weights (drop quant)")
        # The stored default says nothing about an ONNX export, nor an ExecuTorch one (whose quants are its own).
        if self.format == "onnx" or (self.format == "executorch" and self.quant == STORED_QUANT):
            return self.config_class(**self.model_dump(exclude=self.not_settings | {"quant"}, exclude_none=True))
        return self.verb_settings()

    def config(self) -> GGUFConfig | OnnxConfig | WebConfig | ExecuTorchConfig:
        return self.settings().export_config()

    def onnx_only_output(self) -> bool:
        return self.format in ("onnx", "executorch")


def run_export(stage: ExportStage, context: StageContext) -> StageResult:
    """ONNX and web: the stage's directory. GGUF: the file and its Modelfile in the stage's directory, which appears
    in one rename."""
    settings, out = stage.settings(), context.out
    if settings.format in ("onnx", "executorch"):
        return stage.verb.run(settings, context.source, out, progress=context.progress)
    from slmkit.compress.gguf_plan import read_plan  # torch: kept out of CLI start-up

    if settings.format == "web":  # unset: a decoder's plan, else f16, as below; an encoder keeps float32
        settings = dataclasses.replace(settings, quant=None) if settings.quant == STORED_QUANT else settings
        return stage.verb.run(settings, context.source, out, progress=context.progress)
    if settings.quant == STORED_QUANT and read_plan(local_path(context.source)) is not None:
        settings = dataclasses.replace(settings, quant=None)  # a planned model is written as its plan says
    path = out / (f"model.{settings.quant}.gguf" if settings.quant else "model.gguf")  # no quant: the plan, or f16
    result = {}

    def write(tmp: Path) -> None:
        result.update(stage.verb.run(settings, context.source, tmp / path.name, progress=context.progress).summary)

    atomic_directory(out, write)
    result.update({"modelfile": str(out / f"{path.stem}.Modelfile"), "run_with": f"slm chat {path}"})
    return StageResult(result, out / path.name)


RECIPE_STAGES = [StageKind(ExportStage, run_export)]
