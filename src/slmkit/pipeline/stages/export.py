"""The `export` stage: a GGUF file (with its Ollama Modelfile) or an ONNX directory."""

from __future__ import annotations

from typing import ClassVar, Literal

from slmkit.errors import SlmError
from slmkit.export.config import ExportSettings, GGUFConfig, OnnxConfig
from slmkit.models.checkpoint import atomic_directory
from slmkit.pipeline.registry import Stage, StageContext, StageOutput, register_stage, with_settings


class ExportStage(with_settings(ExportSettings, Stage, written_out=True)):
    """ExportSettings' recipe settings."""

    stage: Literal["export"]

    config_class: ClassVar[type] = ExportSettings

    def config(self) -> GGUFConfig | OnnxConfig:
        # The recipe's own words for the one-line error (its keys are no flags).
        if self.format == "onnx" and self.quant != GGUFConfig.quant:
            raise SlmError("quant applies to format gguf; an ONNX export keeps float32 weights (drop quant)")
        return ExportSettings(**self.model_dump(exclude={"stage", "name"})).export_config()

    def onnx_only_output(self) -> bool:
        return self.format == "onnx"


def run_export(stage: ExportStage, context: StageContext) -> StageOutput:
    import slmkit

    config = stage.config()
    lm = slmkit.load(context.source, device="cpu", dtype="float32")
    out = context.out
    if isinstance(config, OnnxConfig):
        return StageOutput(slmkit.export(lm, out, config), out.name)
    path = out / f"model.{config.quant}.gguf"
    result = {}

    def write(tmp) -> None:  # the GGUF and its Modelfile appear together, in one directory rename
        result.update(slmkit.export(lm, tmp / path.name, config))

    atomic_directory(out, write)
    result.update({"modelfile": str(out / f"{path.stem}.Modelfile"), "run_with": f"slm chat {path}"})
    return StageOutput(result, f"{out.name}/{path.name}")


register_stage(ExportStage, run_export)
