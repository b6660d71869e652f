"""The `export` stage: a GGUF file (with its Ollama Modelfile) or an ONNX directory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmkit.errors import SlmError
from slmkit.models.checkpoint import atomic_directory
from slmkit.pipeline.registry import Stage, StageContext, StageOutput, register_stage


class ExportStage(Stage):
    stage: Literal["export"]
    format: Literal["gguf", "onnx"] = "gguf"
    quant: Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0"] = Field("f16", description="GGUF only.")

    def config(self):
        import slmkit

        # Against the default, not model_fields_set: the recipe stored in a run directory writes every field.
        if self.format == "onnx" and self.quant != "f16":
            raise SlmError("quant applies to format gguf; an ONNX export keeps float32 weights (drop quant)")
        return slmkit.OnnxConfig() if self.format == "onnx" else slmkit.GGUFConfig(quant=self.quant)

    def onnx_only_output(self) -> bool:
        return self.format == "onnx"


def run_export(stage: ExportStage, context: StageContext) -> StageOutput:
    import slmkit

    lm = slmkit.load(context.source, device="cpu", dtype="float32")
    out = context.out
    if stage.format == "onnx":
        return StageOutput(slmkit.export(lm, out, stage.config()), out.name)
    path = out / f"model.{stage.quant}.gguf"
    result = {}

    def write(tmp) -> None:  # the GGUF and its Modelfile appear together, in one directory rename
        result.update(slmkit.export(lm, tmp / path.name, stage.config()))

    atomic_directory(out, write)
    result.update({"modelfile": str(out / f"{path.stem}.Modelfile"), "run_with": f"slm chat {path}"})
    return StageOutput(result, f"{out.name}/{path.name}")


register_stage(ExportStage, run_export)
