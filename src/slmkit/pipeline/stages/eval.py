"""The `eval` stage: perplexity (or another task) of the original and the models made so far."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from slmkit.pipeline.registry import MeasureStage, RunModel, StageContext, StageOutput, measure_each, register_stage

SAMPLE_TEXT = Path(__file__).resolve().parents[2] / "samples" / "small-models.txt"


class TorchMeasureStage(MeasureStage):
    weights: Literal["float32", "bfloat16", "int8"] = Field(
        "float32", description="As --weights, for the models the torch backend runs (a GGUF keeps its own).")

    def on_torch(self, model: RunModel) -> bool:
        """Whether torch runs the model, so `weights` (and bench's `compile`) apply: a GGUF or ONNX file runs
        on its own runtime with the weights it was written with."""
        from slmkit.runtime import choose_backend

        return choose_backend(model.spec) == "torch"


class EvalStage(TorchMeasureStage):
    stage: Literal["eval"]
    data: str | None = Field(None, description="Evaluation file; default: the rows the newest finetune stage "
                                               "held back (a classifier), else the run's --data, else a "
                                               "built-in text.")
    task: str | None = None
    max_length: int | None = None
    limit: int | None = None


def run_eval(stage: EvalStage, context: StageContext) -> StageOutput:
    import slmkit
    from slmkit.runtime import open_model

    path = stage.data or context.newest_file("finetune", "heldout") or context.data or str(SAMPLE_TEXT)

    def measure(model: RunModel, update) -> dict:
        weights = stage.weights if stage.on_torch(model) else "float32"
        # "auto": a GGUF is scored by llama.cpp, the runtime it was made for.
        lm = open_model(model.spec, n_ctx=stage.max_length or 2048, logits_all=True, weights=weights)
        config = slmkit.EvalConfig(task=stage.task, max_length=stage.max_length, limit=stage.limit)
        return {**slmkit.evaluate(lm, path, config, progress=update), "backend": lm.backend, "weights": weights}

    return measure_each(stage, context, measure)


register_stage(EvalStage, run_eval)
