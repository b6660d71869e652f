"""The `export` stage: a GGUF file (with its Ollama Modelfile) or an ONNX directory."""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmError
from slmkit.exporters.config import GGUFConfig, OnnxConfig
from slmkit.models.checkpoint import atomic_directory
from slmkit.pipeline.registry import StageContext, StageKind, verb_stage
from slmkit.results import StageResult
from slmkit.verbs import export
from slmkit.verbs.export import ExportSettings


class ExportStage(verb_stage(export.VERB, written_out=True)):
    """ExportSettings' recipe settings."""

    def settings(self) -> ExportSettings:
        # The recipe's own words for the one-line error (its keys are no flags).
        if self.format == "onnx" and self.quant != GGUFConfig.quant:
            raise SlmError("quant applies to format gguf; an ONNX export keeps float32 weights (drop quant)")
        return self.verb_settings()

    def config(self) -> GGUFConfig | OnnxConfig:
        return self.settings().export_config()

    def onnx_only_output(self) -> bool:
        return self.format == "onnx"


def run_export(stage: ExportStage, context: StageContext) -> StageResult:
    """ONNX: the stage's directory. GGUF: the file and its Modelfile in the stage's directory, which appears in one
    rename."""
    settings, out = stage.settings(), context.out
    if settings.format == "onnx":
        return stage.verb.run(settings, context.source, out, progress=context.progress)
    path = out / f"model.{settings.quant}.gguf"
    result = {}

    def write(tmp: Path) -> None:
        result.update(stage.verb.run(settings, context.source, tmp / path.name, progress=context.progress).summary)

    atomic_directory(out, write)
    result.update({"modelfile": str(out / f"{path.stem}.Modelfile"), "run_with": f"slm chat {path}"})
    return StageResult(result, out / path.name)


RECIPE_STAGES = [StageKind(ExportStage, run_export)]
