"""The `eval` stage: perplexity (or another task) of the original and the models made so far."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from slmkit.evaluate.config import EvalConfig, EvalSettings
from slmkit.pipeline.registry import (MeasureStage, RunModel, StageContext, StageOutput, measure_each, register_stage,
                                      with_settings)

SAMPLE_TEXT = Path(__file__).resolve().parents[2] / "samples" / "small-models.txt"


class TorchMeasureStage(MeasureStage):
    # Its own type: a recipe naming weights the runtime lacks fails on the key when it is read.
    weights: Literal["float32", "bfloat16", "int8"] = Field(
        "float32", description="As --weights, for the models the torch backend runs (a GGUF keeps its own).")

    def on_torch(self, model: RunModel) -> bool:
        """Whether torch runs the model, so `weights` (and bench's `compile`) apply: a GGUF or ONNX file runs
        on its own runtime with the weights it was written with."""
        from slmkit.runtime import choose_backend

        return choose_backend(model.spec) == "torch"


class EvalStage(with_settings(EvalSettings, TorchMeasureStage, exclude={"weights"})):
    """EvalSettings' recipe settings, which models to measure and the file to measure them on."""

    stage: Literal["eval"]
    data: str | None = Field(None, description="Evaluation file; default: the rows the newest finetune stage "
                                               "held back (a classifier), else the run's --data, else a "
                                               "built-in text.")

    config_class: ClassVar[type] = EvalSettings
    # Fields the stage keeps for itself; `weights` is which weights a model is opened with.
    not_settings: ClassVar[set[str]] = {"stage", "name", "models", "data", "weights"}

    def config(self) -> EvalConfig:
        return EvalConfig(**self.model_dump(exclude=self.not_settings, exclude_none=True))


def run_eval(stage: EvalStage, context: StageContext) -> StageOutput:
    import slmkit
    from slmkit.runtime import open_model

    path = stage.data or context.newest_file("finetune", "heldout") or context.data or str(SAMPLE_TEXT)
    config = stage.config()

    def measure(model: RunModel, update) -> dict:
        weights = stage.weights if stage.on_torch(model) else "float32"
        # "auto": a GGUF is scored by llama.cpp, the runtime it was made for.
        lm = open_model(model.spec, n_ctx=config.max_length or 2048, logits_all=True, weights=weights)
        return {**slmkit.evaluate(lm, path, config, progress=update), "backend": lm.backend, "weights": weights}

    return measure_each(stage, context, measure)


register_stage(EvalStage, run_eval)
