"""The `eval` stage: perplexity (or another task) of the original and the models made so far. On a text (the
perplexity task) every model but the original is also compared with the original, each on its own runtime: KL
divergence of the next-token distributions, top-1 agreement and the perplexity ratio (`slm eval --reference`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from slmkit.data import infer_task
from slmkit.evaluation.config import EvalConfig
from slmkit.pipeline.registry import MeasureStage, RunModel, StageContext, StageKind, measure_each, one_bar, verb_stage
from slmkit.results import StageResult
from slmkit.verbs import evaluation
from slmkit.verbs.evaluation import EvalSettings

SAMPLE_TEXT = Path(__file__).resolve().parents[2] / "samples" / "small-models.txt"


class TorchMeasureStage(MeasureStage):
    # Its own type: a recipe naming weights the runtime lacks fails on the key when it is read.
    weights: Literal["float32", "bfloat16", "int8"] = Field(
        "float32", description="As --weights, for the models the torch backend runs (a GGUF keeps its own).")

    def on_torch(self, model: RunModel) -> bool:
        """Whether torch runs the model, so `weights` (and bench's `compile`) apply: a GGUF or ONNX file runs
        on its own runtime with the weights it was written with."""
        from slmkit.runtime import choose_backend  # torch: kept out of CLI start-up

        return choose_backend(model.spec) == "torch"

    def weights_for(self, model: RunModel) -> str:
        return self.weights if self.on_torch(model) else "float32"


class EvalStage(verb_stage(evaluation.VERB, TorchMeasureStage, exclude={"weights"})):
    """EvalSettings' recipe settings, which models to measure and the file to measure them on."""

    data: str | None = Field(None, description="Evaluation file; default: the rows the newest finetune stage "
                                               "held back (a classifier), else the run's --data, else a "
                                               "built-in text.")

    # Fields the stage keeps for itself; `weights` is which weights a model is opened with.
    not_settings: ClassVar[set[str]] = {"stage", "name", "models", "data", "weights"}

    def config(self) -> EvalConfig:
        return EvalConfig(**self.model_dump(exclude=self.not_settings, exclude_none=True))

    def settings(self, data: str, model: RunModel, reference: str | None = None) -> EvalSettings:
        """The settings `model` is measured with, on `data`, compared with `reference` (a model spec) if given."""
        return self.verb_settings(data=data, weights=self.weights_for(model), reference=reference)


def run_eval(stage: EvalStage, context: StageContext) -> StageResult:
    data = stage.data or context.newest_file("finetune", "heldout") or context.data or str(SAMPLE_TEXT)
    original = context.models[0]  # the run's own model: StageContext.models starts with it
    # Only a text has next-token distributions to compare; the original is reopened for each model it is compared
    # with, on the runtime its file calls for.
    compared = (stage.task or infer_task(data)) == "perplexity"

    def measure(model: RunModel, update) -> dict:
        settings = stage.settings(data, model, original.spec if compared and model is not original else None)
        # backend "auto": a GGUF is scored by llama.cpp, the runtime it was made for.
        measured = stage.verb.run(settings, model.spec, progress=one_bar(update))
        return {**measured.summary, "backend": measured.record["backend"], "weights": settings.weights}

    return measure_each(stage, context, measure)


RECIPE_STAGES = [StageKind(EvalStage, run_eval)]
